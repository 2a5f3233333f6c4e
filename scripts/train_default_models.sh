#!/usr/bin/env bash
# Re-trains the bundled `linf` and `linf-lp` models from ../shared/data/train (never data/eval) and
# exports them in fp16 into flowsr_cli/weights/. About 4 hours on a 2-core CPU. The prior's fade beyond
# its training range (x4) is calibrated on training photos shrunk by 2 (calibrate_fade.py, about 20 minutes).
# Usage: scripts/train_default_models.sh [RUNS_DIR]   (needs FLOWSR_BACKBONE_DIR for VGG16 weights)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
runs=${1:-runs}
data=../shared/data/train
val=../shared/data/eval/Set5

if [[ ! -f $runs/flow/model.safetensors ]]; then
  flowsr train flow "$data" --out "$runs/flow" --recipe scripts/recipes/linf-flow.toml --val "$val"
fi
if [[ ! -f $runs/finetune/model.safetensors ]]; then
  flowsr train flow "$data" --out "$runs/finetune" --recipe scripts/recipes/linf-finetune.toml \
    --init "$runs/flow/model.safetensors" --val "$val"
fi
if [[ ! -f $runs/prior/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/prior" --recipe scripts/recipes/linf-lp.toml \
    --flow "$runs/finetune/model.safetensors" --val "$val"
fi
if [[ ! -f $runs/prior-texture/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/prior-texture" --recipe scripts/recipes/linf-lp-texture.toml \
    --flow "$runs/prior/model.safetensors" --val "$val"
fi
if [[ ! -f $runs/prior-detail/model.safetensors ]]; then
  flowsr train prior "$data" --out "$runs/prior-detail" --recipe scripts/recipes/linf-lp-detail.toml \
    --flow "$runs/prior-texture/model.safetensors"
fi
python scripts/export_bundled.py linf "$runs/finetune/model.safetensors" \
  --description "LINF, 3x3 patches, small EDSR encoder; trained on a CPU (scales 1-4)"
if [[ ! -f $runs/prior-detail/faded.safetensors ]]; then
  python scripts/calibrate_fade.py "$runs/prior-detail/model.safetensors" "$data" \
    --out "$runs/prior-detail/faded.safetensors"
fi
python scripts/export_bundled.py linf-lp "$runs/prior-detail/faded.safetensors" \
  --description "LINF with the learned prior (Tsao et al., CVPR 2024), trained for scales 1-4 and faded beyond; the default model"
