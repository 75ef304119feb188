#!/usr/bin/env bash
# One call on a GPU machine whose python3 has torch and triton (no network needed),
# starting cold, within BCKD_GPU_BUDGET seconds (default 450: the project's limit is 8
# minutes), in this order:
#   1. pycocotools from the wheels carried in .whl (the GPU image lacks it), and a check
#      that the training data was carried (.cache/data/fashion, the MobileNetV2 wheel);
#   2. the extension built in place with its CUDA kernels for this GPU (BCKD_CUDA=1);
#   3. every CUDA and Triton test: pytest -m "kernels or cuda or hypothesis" (the
#      operators on every backend, the property tests, and bckd_train's CUDA tests:
#      the no-sync loss path, NCCL DDP, training in float32 and bf16, --deterministic
#      resume, cuda:N), in parallel processes (pytest-xdist);
#   4. torchrun with one process on the GPU: NCCL's process group joined (device_id),
#      3 iterations under DDP, the group destroyed at the end;
#   5. benchmarks/gpu_determinism.py: the Triton and CUDA ops in two processes, bits
#      compared, and torch.compile(fullgraph=True) with inductor over the Triton ops;
#   6. benchmarks/bench_losses.py --quick in both map layouts (nchw, channels_last),
#      float32 then bfloat16, with the time that is left.
# A step that cannot run (no GPU, no data, no pycocotools, a prerequisite skip inside
# the tests) is a FAIL, never a silent skip; a step the budget cuts says so. The
# training smoke run is a second call (benchmarks/gpu_train_smoke.sh).
#
# Leaves in DIR (default: $OUT when set, else benchmarks/results/gpu) at most 7 files:
# summary.txt (one line per step, PASS / FAIL / NOTE, then the result and each step's
# seconds), build.log, tests.log, steps.log (pip, torchrun, determinism, benchmark
# errors), bench.md, bench.csv, bench.png. Run folders and pytest's temporary files go
# to BCKD_GPU_WORK (default /tmp/bckd_gpu), never into DIR. BCKD_GPU_PYTEST_K=EXPR
# keeps the tests that pytest's -k EXPR selects (a rerun of some of them). BCKD_GPU_DRY_RUN=1 runs every
# step on a machine without a GPU, each failing, to check this script itself.
#     bash benchmarks/gpu_run.sh [DIR]
# The device call that runs it (carry list, timeout): benchmarks/gpu_prepare.sh prints it.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results/gpu}}
WORK=${BCKD_GPU_WORK:-/tmp/bckd_gpu}
BUDGET=${BCKD_GPU_BUDGET:-450}
OUTPUTS=(summary.txt build.log tests.log steps.log bench.md bench.csv bench.png)
SUMMARY=$DIR/summary.txt
LOG=$DIR/steps.log
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh
declare -A SECS

say "benchmarks/gpu_run.sh, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget $BUDGET s"
if ! "$PY" - <<'PY' 2>>"$LOG" | tee -a "$SUMMARY"; then
import os, platform, sys, torch, triton
if not torch.cuda.is_available():
    print("FAIL  no CUDA GPU: torch.cuda.is_available() is False; nothing here can be checked")
    sys.exit(os.environ.get("BCKD_GPU_DRY_RUN") != "1")
print(f"NOTE  device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
      f"{os.cpu_count()} CPUs, torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}")
PY
    say "RESULT: FAIL (no GPU)"
    exit 1
fi
grep -q "^FAIL" "$SUMMARY" && FAILS=1

# 1. prerequisites
if ensure_pycocotools; then
    pass "pycocotools imports ($("$PY" -c 'import pycocotools, os; print(os.path.dirname(pycocotools.__file__))'))"
else
    fail "pycocotools does not import and no wheel in .whl installed it: the training tests and the torchrun run need it (run benchmarks/gpu_prepare.sh here, carry .whl)"
fi
MISSING=$(missing_training_data | tr '\n' ' ')
if [ -z "$MISSING" ]; then
    DATA=1
    pass "training data carried ($CACHE_DIR/data/fashion, the MobileNetV2 wheel)"
else
    DATA=0
    fail "training data not carried (missing: $MISSING): bckd_train's CUDA tests and the torchrun run cannot run; run benchmarks/gpu_prepare.sh here and pass its carry list"
fi

# 2. build
t=$SECONDS
if ensure_extension "$DIR/build.log"; then
    SECS[build]=$((SECONDS - t))
    pass "build: the extension with its CUDA kernels, in ${SECS[build]} s"
else
    SECS[build]=$((SECONDS - t))
    fail "build: the extension's CUDA kernels are missing (see build.log); its tests fail as prerequisite skips. Last errors:"
    grep -E "error|Error" "$DIR/build.log" | head -12 | sed 's/^/      /' | tee -a "$SUMMARY"
fi

# 3. tests
MARKERS="kernels or cuda or hypothesis"
[ "$DATA" = 1 ] || MARKERS="($MARKERS) and not data"
OPTS=(-q -p no:cacheprovider -rfEs --durations 25 --basetemp "$WORK/pytest"
      --ignore=tests/test_mm.py --ignore-glob='tests/test_yolo*' --ignore=tests/test_triton_compile.py)
if "$PY" -c "import xdist" 2>/dev/null; then
    OPTS+=(-n "${BCKD_GPU_TEST_WORKERS:-12}")
    # work stealing (pytest-xdist 3.2+): a worker that is done takes tests from a busy one
    "$PY" -c "import sys, xdist; sys.exit(tuple(map(int, xdist.__version__.split('.')[:2])) < (3, 2))" 2>/dev/null &&
        OPTS+=(--dist worksteal)
else
    note "pytest-xdist is missing: the tests run in one process (slower)"
fi
"$PY" -c "import pytest_timeout" 2>/dev/null && OPTS+=(--timeout 300)
t=$SECONDS
c=$(cap 330 190)
LABEL="tests (-m \"$MARKERS\"${BCKD_GPU_PYTEST_K:+ -k \"$BCKD_GPU_PYTEST_K\"})"
[ -n "${BCKD_GPU_PYTEST_K:-}" ] && OPTS+=(-k "$BCKD_GPU_PYTEST_K")
TORCHINDUCTOR_COMPILE_THREADS=1 timeout -s INT -k 30 "$c" "$PY" -m pytest tests -m "$MARKERS" "${OPTS[@]}" \
    >"$DIR/tests.log" 2>&1
rc=$?
SECS[tests]=$((SECONDS - t))
last=$(grep -E "[0-9]+ (passed|failed|error)" "$DIR/tests.log" | tail -1 | tr -d '=' | sed 's/^ *//')
# Skips a GPU run may have: float64 on the Triton kernels, interpreter-only tests, the
# tests that need two GPUs (the machine has one). Any other skip is a test that did not
# run for want of something (GPU, extension, triton...).
BAD_SKIPS=$(grep -E "^SKIPPED" "$DIR/tests.log" | grep -v -E "not float64|Triton interpreter|two CUDA GPUs")
if [ "$rc" = 124 ]; then
    fail "$LABEL: cut by the budget after $c s; so far: ${last:-nothing reported} (tests.log)"
elif [ "$rc" != 0 ]; then
    fail "$LABEL: exit $rc in ${SECS[tests]} s: ${last:-no summary} (tests.log)"
    grep -E "^(FAILED|ERROR)" "$DIR/tests.log" | head -30 | sed 's/^/      /' | tee -a "$SUMMARY"
else
    pass "$LABEL: $last"
fi
if [ -n "$BAD_SKIPS" ]; then
    fail "tests: $(echo "$BAD_SKIPS" | grep -o '^SKIPPED \[[0-9]*\]' | tr -dc '0-9\n' | awk '{s += $1} END {print s}') tests skipped for a missing prerequisite:"
    echo "$BAD_SKIPS" | head -15 | sed 's/^/      /' | tee -a "$SUMMARY"
fi

# 4. torchrun, one process on the GPU
t=$SECONDS
if [ "$DATA" = 1 ]; then
    c=$(cap 75 160)
    timeout -k 10 "$c" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m bckd_train train \
        --config instant --max-iters 3 --device cuda --deterministic --out "$WORK/torchrun" >"$WORK/torchrun.log" 2>&1
    rc=$?
    SECS[torchrun]=$((SECONDS - t))
    { echo "=== torchrun (exit $rc)"; cat "$WORK/torchrun.log"; } >>"$LOG"
    group=$("$PY" -c "import torch; print(torch.load('$WORK/torchrun/checkpoint.pth', weights_only=False)['runtime']['process_group'])" 2>/dev/null)
    if [ "$rc" = 0 ] && [ "$group" = nccl ] && ! grep -q "destroy_process_group" "$WORK/torchrun.log"; then
        pass "torchrun --nproc_per_node 1 on the GPU: NCCL process group joined, 3 iterations under DDP, group destroyed (${SECS[torchrun]} s)"
    else
        fail "torchrun --nproc_per_node 1 on the GPU: exit $rc, process group ${group:-unknown}$(grep -q destroy_process_group "$WORK/torchrun.log" && echo ', not destroyed at the end') (steps.log)"
        # the command's own error (a one-line UserError, an exception), not the launcher's report
        { grep -E "^bckd_train [a-z-]+:" "$WORK/torchrun.log"; grep -E "^[A-Za-z_.]*(Error|Exception):" \
            "$WORK/torchrun.log" | grep -v elastic; } | head -6 | sed 's/^/      /' | tee -a "$SUMMARY"
    fi
else
    fail "torchrun on the GPU: not run (training data not carried)"
fi

# 5. determinism across processes, torch.compile over the Triton ops
t=$SECONDS
c=$(cap 120 100)
timeout -k 10 "$c" "$PY" benchmarks/gpu_determinism.py --device cuda >"$WORK/determinism.log" 2>&1
rc=$?
SECS[determinism]=$((SECONDS - t))
{ echo "=== determinism (exit $rc)"; cat "$WORK/determinism.log"; } >>"$LOG"
case $rc in
    0) pass "$(grep '^determinism:' "$WORK/determinism.log") (${SECS[determinism]} s)"
       pass "$(grep '^compile:' "$WORK/determinism.log")" ;;
    3) fail "$(head -1 "$WORK/determinism.log")" ;;
    124) fail "determinism check: cut by the budget after $c s" ;;
    *) fail "determinism check: exit $rc (steps.log)"
       grep -E "^(determinism|compile):|FAIL" "$WORK/determinism.log" | head -20 | sed 's/^/      /' | tee -a "$SUMMARY" ;;
esac

# 6. benchmark, both layouts, float32 then bfloat16 (each writes its table when done)
name=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null)
t=$SECONDS
for dtype in float32 bfloat16; do
    if [ "$dtype" = float32 ]; then c=$((($(left) - 10) / 2)); plot=(--plot "$DIR/bench.png"); else c=$(cap 600 5); plot=(); fi
    if [ "$c" -lt 30 ]; then
        fail "benchmark $dtype: not run, $(left) s of the budget left"
        continue
    fi
    t1=$SECONDS
    timeout -s INT -k 10 "$c" "$PY" benchmarks/bench_losses.py --quick --layout nchw,channels_last --dtype "$dtype" \
        --csv "$DIR/bench.csv" "${plot[@]}" >>"$DIR/bench.md" 2>>"$LOG"
    rc=$?
    if [ "$rc" = 0 ]; then
        missed=$(sed -n '/^targets/,$p' "$DIR/bench.md" | grep -c MISSED)
        met=$(sed -n '/^targets/,$p' "$DIR/bench.md" | grep -c "(met")
        pass "benchmark $dtype, nchw and channels_last, on $name: $((SECONDS - t1)) s (bench.md, bench.csv); its targets: $met met, $missed missed"
    elif [ "$rc" = 124 ]; then
        fail "benchmark $dtype: cut by the budget after $c s (the rows timed so far are in bench.md)"
    else
        fail "benchmark $dtype: exit $rc (steps.log)"
    fi
done
SECS[benchmark]=$((SECONDS - t))

total=$((SECONDS - T0))
say "seconds: build ${SECS[build]:-0}, tests ${SECS[tests]:-0}, torchrun ${SECS[torchrun]:-0}, determinism ${SECS[determinism]:-0}, benchmark ${SECS[benchmark]:-0}; total $total of $BUDGET"
if [ "$FAILS" = 0 ]; then
    say "RESULT: PASS in $total s"
else
    say "RESULT: FAIL ($FAILS FAIL lines above) in $total s"
fi
[ "$FAILS" = 0 ]
