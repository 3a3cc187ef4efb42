#!/usr/bin/env bash
# The GPU check of the performance issue as one command, for a machine with an NVIDIA GPU and a CUDA PyTorch but
# not necessarily this project's environment or a network:
#
#   make gpu-bundle                      # where pip works: .gpu-bundle/ (lap, diffusers wheels; 8192 CIFAR-10 images)
#   bash tools/device_check.sh [OUT]     # on the GPU machine; results in OUT (default results/device)
#
# 1. the assignment tests and the CUDA tests (tests/test_assignment.py, tests/test_cuda.py);
# 2. the assignment timing on CUDA in fp16 up to B=16384 (params.yaml group assignment_timing_cuda), the certified
#    GPU auction among the methods (part `auction` runs its tests on the GPU first):
#    OUT/tables/assignment_timing_cuda.csv and OUT/figures/assignment_timing_cuda.png, the GPU named in each row;
# 3. the training-step overhead of the exact assignment (inline and in a background thread) vs vanilla on the GPU
#    for the paper's CIFAR-10 UNet (bf16) at B=128 and 512: OUT/assignment_overhead_cuda.csv;
# 4. consistency training on CUDA (tests/test_consistency.py, the CUDA consistency test) and its seconds per step
#    vs the eps objective for the consistency `paper` profile's model at B=512: OUT/consistency_step_time.csv;
# 5. side-by-side training on CUDA (the CUDA resume and side-by-side tests of tests/test_cuda.py), and the
#    images/s of the 32 px profile's 9 runs as 9 processes, one run, side by side, with FLOPs and share of peak
#    (params.yaml runs_throughput: gpu_small, gpu_ddpm): OUT/runs_throughput_cuda.csv;
# 6. the GPU study at gpu_quick (tools/gpu_study.sh: data, classifier, 9 runs side by side, evaluation), tables in
#    GPU_OUT (default results/gpu); CIFAR-10 from GPU_DATA_DIR/cifar10 (default data), else from CIFAR10_ARCHIVE.
# Each part has its own time limit; the log is OUT/device_check.log and the exit status is non-zero if any part
# failed. PARTS="side_by_side throughput gpu_quick" runs only the named parts (names as in the log's == lines).
# DRY_RUN=1 runs the same plumbing on the CPU with tiny sizes (what the test suite does). PYTHON picks the
# interpreter (default python3), BUNDLE the bundle folder (default .gpu-bundle).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/device}
mkdir -p "$out"
py=${PYTHON:-python3}
bundle=${BUNDLE:-.gpu-bundle}

# the bundled wheels only where the interpreter lacks what they provide
if [ "${DRY_RUN:-0}" != 1 ] && ! "$py" -c "import lap, diffusers" 2> /dev/null \
    && compgen -G "$bundle/wheels/*.whl" > /dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$bundle"/wheels/*.whl \
    || { echo "could not install the bundled wheels"; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=data
[ -f "$bundle/data/cifar10/train.npz" ] && data=$bundle/data

status=0
log="$out/device_check.log"
: > "$log"
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to OUT/device_check.log, remember a failure
  local name=$1 limit=$2; shift 2
  [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" $name "* ]] || return 0
  local override="LIMIT_$name"; limit=${!override:-$limit}  # e.g. LIMIT_gpu_quick=300
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== $name FAILED (exit $rc)" | tee -a "$log"; status=1; }
}

if [ "${DRY_RUN:-0}" = 1 ]; then
  part timing 300 "$py" -m immiscible.experiments.timing --group assignment_timing_cuda --device cpu --batch-sizes 32 64 \
    --max-seconds 1 --data-dir "$data" --output-dir "$out"
  part bench 300 "$py" -m immiscible.experiments.bench --profile smoke --batch-sizes 8 --steps 4 --repeats 1 --data-dir "$data" \
    --out "$out/assignment_overhead_cuda.csv"
  part consistency 300 "$py" tools/consistency_step_time.py --profile smoke --steps 6 --data-dir "$data" \
    --out "$out/consistency_step_time.csv"
  part throughput 300 "$py" -m immiscible.experiments.runs_throughput --setting smoke --out "$out/runs_throughput_cuda.csv"
  part gpu_quick 600 env DATA_DIR="${GPU_DATA_DIR:-$data}" PYTHON="$py" CHECKPOINT_ROOT="$out/checkpoints" bash tools/gpu_study.sh gpu_smoke "${GPU_OUT:-$out/gpu}"
  exit $status
fi

(nvidia-smi; "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
 # the exact solver's C kernel: built here once (not inside a timing), or why not (then `lap` solves)
 "$py" -c "from immiscible.noise import native; print('jv kernel:', native.build())") > "$out/hardware.txt" 2>&1
if [ ! -f "$data/cifar10/train.npz" ] && [ -n "${CIFAR10_ARCHIVE:-}" ]; then  # once, for every part
  "$py" -m immiscible.data --dataset cifar10 --out "$data/cifar10" --archive "$CIFAR10_ARCHIVE" 2>&1 | tail -3
fi
part pytest_cuda 120 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_assignment.py tests/test_cuda.py
part auction 90 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_auction.py tests/test_cuda.py -k auction
part auction_profile 180 "$py" tools/auction_profile.py --data-dir "$data" --out "$out/auction_profile.csv" \
  --batch-sizes 1024 2048 4096 8192 --tune-at 1024 4096 8192 --host-threads 1 4 16
part timing 180 "$py" -m immiscible.experiments.timing --group assignment_timing_cuda --data-dir "$data" --output-dir "$out"
part bench 150 "$py" -m immiscible.experiments.bench --profile paper --batch-sizes 128 512 --steps 10 --repeats 1 \
  --data-dir "$data" --out "$out/assignment_overhead_cuda.csv"
part pytest_consistency 90 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_consistency.py tests/test_cuda.py -k consistency
part consistency 120 "$py" tools/consistency_step_time.py --profile paper --batch-size 512 --steps 12 --data-dir "$data" \
  --out "$out/consistency_step_time.csv"
part side_by_side 150 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py -k "side_by_side or resume"
part throughput 300 "$py" -m immiscible.experiments.runs_throughput --setting gpu_small --setting gpu_ddpm \
  --out "$out/runs_throughput_cuda.csv"
part gpu_quick 420 env DATA_DIR="${GPU_DATA_DIR:-data}" PYTHON="$py" bash tools/gpu_study.sh gpu_quick "${GPU_OUT:-results/gpu}"
exit $status
