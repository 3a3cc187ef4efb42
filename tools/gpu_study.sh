#!/usr/bin/env bash
# The unconditional experiment's GPU study on one GPU, end to end: data, the 32 px proxy classifier, every run of
# the profile side by side in one process (immiscible/engine/side_by_side.py), the evaluation and its tables.
#
#   bash tools/gpu_study.sh [PROFILE] [OUT]      # default: gpu_quick (about 7 minutes on one H200), results/gpu
#   bash tools/gpu_study.sh gpu                  # about an hour: 20k steps per run
#
# Tables go to OUT/tables (the report reads OUT/tables/*_fid.csv as its `gpu` setting), never over the CPU results;
# the seconds of each part to OUT/tables/gpu_study_seconds_PROFILE.csv. Runs live in
# checkpoints/unconditional/PROFILE/<method>-<seed> and resume when the study is started again.
# Data: DATA_DIR/cifar10 (default data/cifar10), prepared from CIFAR10_ARCHIVE (or downloaded) when missing.
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-gpu_quick}
out=${2:-results/gpu}
py=${PYTHON:-python3}
data_dir=${DATA_DIR:-data}
export PYTHONUNBUFFERED=1
mkdir -p "$out/tables"
times="$out/tables/gpu_study_seconds_$profile.csv"
echo "part,seconds" > "$times"
timed() {  # timed NAME COMMAND...: run, append its wall seconds to the times table
  local name=$1 start=$SECONDS; shift
  echo "== $name: $*"
  "$@"
  echo "$name,$((SECONDS - start))" >> "$times"
}
if [ ! -f "$data_dir/cifar10/train.npz" ]; then
  timed data "$py" -m immiscible.data --dataset cifar10 --out "$data_dir/cifar10" ${CIFAR10_ARCHIVE:+--archive "$CIFAR10_ARCHIVE"}
fi
args=(--profile "$profile" --data-dir "$data_dir" --output-dir "$out"
      --checkpoint-dir "${CHECKPOINT_DIR:-checkpoints/unconditional}" --classifier-dir "${CLASSIFIER_DIR:-checkpoints/classifier}")
timed classifier "$py" -m immiscible.experiments.unconditional classifier "${args[@]}"
timed train "$py" -m immiscible.experiments.unconditional train "${args[@]}"
timed evaluate "$py" -m immiscible.experiments.unconditional evaluate "${args[@]}"
cat "$times"
