#!/usr/bin/env bash
# The GPU study on one GPU, end to end: data, the proxy classifiers, every run of a profile side by side in one
# process (immiscible/engine/side_by_side.py), the evaluations and their tables.
#
#   bash tools/gpu_study.sh [PROFILE] [OUT]      # default: gpu_quick (the unconditional experiment), results/gpu
#   bash tools/gpu_study.sh gpu                  # unconditional, consistency and ablation at 32 px, 20k steps per run
#
# Every experiment with a profile of that name in params.yaml runs (gpu_quick: unconditional only). Tables go to
# OUT/tables (the report reads OUT/tables/*_fid.csv as its `gpu` setting), never over the CPU results; the seconds
# of each part to OUT/tables/gpu_study_seconds_PROFILE.csv. Runs live in CHECKPOINT_ROOT/<experiment>/PROFILE/
# (default checkpoints/) and resume when the study is started again. Data: DATA_DIR/cifar10 (default data/cifar10),
# prepared from CIFAR10_ARCHIVE (or downloaded) when missing. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-gpu_quick}
out=${2:-results/gpu}
py=${PYTHON:-python3}
data_dir=${DATA_DIR:-data}
root=${CHECKPOINT_ROOT:-checkpoints}
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
has_profile() {  # has_profile GROUP: params.yaml GROUP.profiles holds PROFILE
  "$py" -c "import sys, yaml; g = yaml.safe_load(open('params.yaml')).get(sys.argv[1], {}); \
sys.exit(0 if sys.argv[2] in g.get('profiles', {}) else 1)" "$1" "$profile"
}
if [ ! -f "$data_dir/cifar10/train.npz" ]; then
  timed data "$py" -m immiscible.data --dataset cifar10 --out "$data_dir/cifar10" ${CIFAR10_ARCHIVE:+--archive "$CIFAR10_ARCHIVE"}
fi
common=(--profile "$profile" --data-dir "$data_dir" --output-dir "$out")
u=(--checkpoint-dir "$root/unconditional" --classifier-dir "$root/classifier")
timed classifier "$py" -m immiscible.experiments.unconditional classifier "${common[@]}" "${u[@]}"
timed train "$py" -m immiscible.experiments.unconditional train "${common[@]}" "${u[@]}"
timed evaluate "$py" -m immiscible.experiments.unconditional evaluate "${common[@]}" "${u[@]}"
if has_profile consistency; then
  c=(--checkpoint-dir "$root/consistency" --classifier-dir "$root/classifier-consistency")
  timed consistency_classifier "$py" -m immiscible.experiments.consistency classifier "${common[@]}" "${c[@]}"
  timed consistency_train "$py" -m immiscible.experiments.consistency train "${common[@]}" "${c[@]}"
  timed consistency_evaluate "$py" -m immiscible.experiments.consistency evaluate "${common[@]}" "${c[@]}"
fi
if has_profile ablation; then  # after the unconditional runs: its base arm reuses their vanilla and exact runs
  timed ablation_train "$py" -m immiscible.experiments.ablation_train --all --profile "$profile" \
    --data-dir "$data_dir" --checkpoint-dir "$root/ablation"
  a=(--checkpoint-dir "$root/ablation" --classifier-dir "$root/classifier" --reuse-root "$root")
  timed ablation_classifier "$py" -m immiscible.experiments.ablation classifier "${common[@]}" "${a[@]}"
  timed ablation_evaluate "$py" -m immiscible.experiments.ablation evaluate "${common[@]}" "${a[@]}"
fi
cat "$times"
