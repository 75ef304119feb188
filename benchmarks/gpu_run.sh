#!/usr/bin/env bash
# One call on a GPU machine whose python3 already has torch and triton (no
# network needed): build the kernels in place (CUDA forced on, for this GPU's
# architecture), run the kernel tests (marker kernels), then the loss
# benchmark; the training smoke run too when its data was carried along
# (benchmarks/gpu_train_smoke.sh says what to carry). Leaves summary.txt,
# build.log, tests.log, the benchmark table (.md), CSV and plot in DIR
# (default: $OUT when set, else benchmarks/results/gpu). If the build fails it
# says so first and still runs the Triton ones (kernels and triton). About 5
# minutes on an H200.
#     bash benchmarks/gpu_run.sh [DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results/gpu}}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
# The kernels are built in place, not installed: benchmarks/*.py, whose own folder is
# what python puts on sys.path, import them from the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$DIR/summary.txt"
"$PY" - <<'PY' | tee "$SUMMARY"
import platform, torch, triton
print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
      f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}")
PY

start=$SECONDS
BCKD_CUDA=1 "$PY" setup.py build_ext --inplace >"$DIR/build.log" 2>&1
build=$?
if [ $build -ne 0 ] || ! "$PY" -c "import bckd_kernels, sys; sys.exit(0 if bckd_kernels.HAS_EXTENSION else 1)"; then
    echo "BUILD FAILED (exit $build): the C++/CUDA ops are missing; running the Triton tests only. Last lines of build.log:" | tee -a "$SUMMARY"
    grep -E "error|Error" "$DIR/build.log" | head -20 | tee -a "$SUMMARY"
    MARKERS="kernels and triton"
    build=1
else
    echo "build: ok in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    MARKERS="kernels"
fi

start=$SECONDS
"$PY" -m pytest tests -m "$MARKERS" -q -p no:cacheprovider >"$DIR/tests.log" 2>&1
tests=$?
echo "tests: exit $tests in $((SECONDS - start)) s: $(tail -1 "$DIR/tests.log")" | tee -a "$SUMMARY"
grep -E "^(FAILED|ERROR)" "$DIR/tests.log" | head -30 | tee -a "$SUMMARY"

name=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
start=$SECONDS
"$PY" benchmarks/bench_losses.py --csv "$DIR/bench_$name.csv" --plot "$DIR/bench_$name.png" >"$DIR/bench_$name.md" 2>"$DIR/bench.err"
bench=$?
echo "benchmark: exit $bench in $((SECONDS - start)) s (bench_$name.md)" | tee -a "$SUMMARY"

train=0
if [ -x benchmarks/gpu_train_smoke.sh ]; then
    bash benchmarks/gpu_train_smoke.sh "$DIR" 2>&1 | tail -20 | tee -a "$SUMMARY"
    train=${PIPESTATUS[0]}
fi
echo "build exit $build, tests exit $tests, benchmark exit $bench, training smoke exit $train" | tee -a "$SUMMARY"
[ $build -eq 0 ] && [ $tests -eq 0 ] && [ $bench -eq 0 ] && [ $train -eq 0 ]
