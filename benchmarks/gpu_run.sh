#!/usr/bin/env bash
# One call on a GPU machine whose python3 already has torch and triton: build
# the kernels (CUDA forced on), run the tests (CUDA and Triton ones included),
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
# The training tests need the prepared data and weights (.cache, fetched by
# scripts/setup.sh); a GPU machine without network runs them only when .cache/data
# and .cache/sources were carried to it.
if [ -d .cache/data/fashion ] && [ -d .cache/sources ]; then
    TESTS=tests
else
    TESTS="tests/test_bin_cls_distill.py tests/test_giou.py tests/test_functional.py tests/test_triton.py"
    echo "no .cache/data or .cache/sources: kernel tests only"
fi
"$PY" -m pytest $TESTS -q -p no:cacheprovider 2>&1 | tee "$DIR/tests.log" | tail -40
tests=${PIPESTATUS[0]}
name=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
"$PY" benchmarks/bench_losses.py --csv "$DIR/bench_$name.csv" --plot "$DIR/bench_$name.png" 2>&1 | tee "$DIR/bench_$name.md"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
