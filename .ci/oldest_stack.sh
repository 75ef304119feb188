#!/usr/bin/env bash
# The oldest stack the project supports (torch 2.11, triton 3.6: what the GPU
# machines run): its own virtual environment, the extension built against it
# with the CUDA kernels forced on, and the kernel tests, the Triton compile
# check included. numpy stays below 2.4 there: triton 3.6's interpreter passes
# run-time ints as 1-element arrays, which numpy 2.4 no longer converts to scalars.
#     bash .ci/oldest_stack.sh [install|test]    (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BCKD_OLDEST_VENV:-.venv-oldest}
PYTHON=${PYTHON:-python3}
STEP=${1:-all}
if [ "$STEP" != test ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install -q torch==2.11.0 torchvision==0.26.0 "numpy<2.4" pytest hypothesis
fi
[ "$STEP" = install ] && exit 0
BCKD_CUDA=1 bash .ci/kernels_in_copy.sh "$PWD/$VENV/bin/python" "${TMPDIR:-/tmp}/bckd-oldest"  \
    tests/test_bin_cls_distill.py tests/test_giou.py tests/test_functional.py tests/test_triton.py \
    tests/test_triton_compile.py tests/test_bad_input.py tests/test_reliability.py tests/test_cpu_layouts.py \
    tests/test_vector_paths.py
