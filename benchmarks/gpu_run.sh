#!/usr/bin/env bash
# One call on a GPU machine whose python3 already has torch and triton: build
# the kernels (CUDA forced on), run every test (CUDA and Triton ones included),
# then the loss benchmark. Leaves tests.log, the benchmark table (.md), the CSV
# and the plot in DIR (default: $OUT when set, else benchmarks/results).
#     bash benchmarks/gpu_run.sh [DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results}}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1
BCKD_CUDA=1 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -20 || exit 1
"$PY" -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$DIR/tests.log" | tail -40
tests=${PIPESTATUS[0]}
name=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
"$PY" benchmarks/bench_losses.py --csv "$DIR/bench_$name.csv" --plot "$DIR/bench_$name.png" 2>&1 | tee "$DIR/bench_$name.md"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
