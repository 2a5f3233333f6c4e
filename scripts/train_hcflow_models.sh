#!/usr/bin/env bash
# Re-trains the bundled `hcflow` and `hcflow-lp` models (x4) from ../shared/data/train (never data/eval)
# and exports them in fp16 into flowsr_cli/weights/. About 165 minutes on a 2-core CPU: the flow (HCFlow,
# NLL with its LR term, 90 minutes), its HCFlow+ fine-tuning (30 minutes), then the learned prior on the
# frozen fine-tuned flow (45 minutes).
# Usage: scripts/train_hcflow_models.sh [RUNS_DIR]   (needs FLOWSR_BACKBONE_DIR for VGG16 weights)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
runs=${1:-runs}
data=../shared/data/train
val=../shared/data/eval/Set5

if [[ ! -f $runs/hcflow/model.safetensors ]]; then
  flowsr train flow "$data" --out "$runs/hcflow" --recipe scripts/recipes/hcflow-flow.toml --val "$val"
fi
if [[ ! -f $runs/hcflow-plus/model.safetensors ]]; then
  flowsr train flow "$data" --out "$runs/hcflow-plus" --recipe scripts/recipes/hcflow-finetune.toml \
    --init "$runs/hcflow/model.safetensors" --val "$val"
fi
if [[ ! -f $runs/hcflow-lp/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/hcflow-lp" --recipe scripts/recipes/hcflow-lp.toml \
    --flow "$runs/hcflow-plus/model.safetensors" --val "$val"
fi
python scripts/export_bundled.py hcflow "$runs/hcflow-plus/model.safetensors" --scales 4,4 \
  --description "HCFlow x4 (K = 12, RRDB extractors [2, 1]), HCFlow+ fine-tuned; trained on a CPU"
python scripts/export_bundled.py hcflow-lp "$runs/hcflow-lp/model.safetensors" --scales 4,4 \
  --description "HCFlow x4 with the learned prior (Tsao et al., CVPR 2024)"
