#!/usr/bin/env bash
# Re-trains the bundled image rescaling models `hcflow-rescale-x2` and `hcflow-rescale-x4` from
# ../shared/data/train (never data/eval) and exports them in fp16 into flowsr_cli/weights/. Both train at once,
# one thread each, for the minutes of their recipes (scripts/recipes/hcflow-rescale-x{2,4}.toml): about 95 minutes
# on a 2-core CPU. A run folder that already has its model is kept (delete it to train again).
# Usage: scripts/train_rescale_models.sh [RUNS_DIR] [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
runs=${1:-runs}
minutes=${2:-}
data=../shared/data/train
val=../shared/data/eval/Set5

train() {
  local scale=$1
  if [[ ! -f $runs/rescale-x$scale/model.safetensors ]]; then
    OMP_NUM_THREADS=1 flowsr train rescale "$data" --scale "$scale" --out "$runs/rescale-x$scale" \
      --recipe "scripts/recipes/hcflow-rescale-x$scale.toml" --val "$val" ${minutes:+--time-budget "$minutes"}
  fi
}

train 2 &
x2=$!
train 4 &
x4=$!
wait "$x2" || { echo "training x2 failed (see above)" >&2; wait "$x4" || true; exit 1; }
wait "$x4" || { echo "training x4 failed (see above)" >&2; exit 1; }

for scale in 2 4; do
  python scripts/export_bundled.py "hcflow-rescale-x$scale" "$runs/rescale-x$scale/model.safetensors" \
    --scales "$scale,$scale" \
    --description "HCFlow image rescaling x$scale, for flowsr rescale down/up (not upscale); trained on a CPU"
done
