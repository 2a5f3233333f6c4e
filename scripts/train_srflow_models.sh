#!/usr/bin/env bash
# Re-trains the bundled `srflow` and `srflow-lp` models (x4) from ../shared/data/train (never data/eval)
# and exports them in fp16 into flowsr_cli/weights/. About 200 minutes on a 2-core CPU.
# Usage: scripts/train_srflow_models.sh [RUNS_DIR]   (needs FLOWSR_BACKBONE_DIR for VGG16 weights)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
runs=${1:-runs}
data=../shared/data/train
val=../shared/data/eval/Set5

if [[ ! -f $runs/srflow/model.safetensors ]]; then
  flowsr train flow "$data" --out "$runs/srflow" --recipe scripts/recipes/srflow-flow.toml --val "$val"
fi
if [[ ! -f $runs/srflow-lp/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/srflow-lp" --recipe scripts/recipes/srflow-lp.toml \
    --flow "$runs/srflow/model.safetensors" --val "$val"
fi
# The shipped prior went on in two more runs of the same recipe (the learning rate restarting each time):
# 14 and 33 more minutes. Its first run had stopped after 461 of its 40 minutes' steps (a fixed bug).
if [[ ! -f $runs/srflow-lp-more/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/srflow-lp-more" --recipe scripts/recipes/srflow-lp.toml \
    --flow "$runs/srflow-lp/model.safetensors" --time-budget 14 --val "$val"
fi
if [[ ! -f $runs/srflow-lp-more2/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/srflow-lp-more2" --recipe scripts/recipes/srflow-lp.toml \
    --flow "$runs/srflow-lp-more/model.safetensors" --time-budget 33 --val "$val"
fi
# Then 75 minutes with a texture term added to the loss (Gram matrices of VGG16 blocks 2-4, weight 2):
# B100 x4 LPIPS 0.4111 -> 0.3075 (issue 9). This is the shipped prior.
if [[ ! -f $runs/srflow-lp-texture/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/srflow-lp-texture" --recipe scripts/recipes/srflow-lp-texture.toml \
    --flow "$runs/srflow-lp-more2/model.safetensors" --val "$val"
fi
python scripts/export_bundled.py srflow "$runs/srflow/model.safetensors" --scales 4,4 \
  --description "SRFlow x4, small RRDB conditioner (8 blocks), K = 4; trained on a CPU"
python scripts/export_bundled.py srflow-lp "$runs/srflow-lp-texture/model.safetensors" --scales 4,4 \
  --description "SRFlow x4 with the learned prior (Tsao et al., CVPR 2024)"
