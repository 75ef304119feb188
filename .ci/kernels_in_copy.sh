#!/usr/bin/env bash
# Builds the extension with PYTHON in a copy of the tracked sources (so its
# _C*.so never replaces the one .venv uses) and runs the kernel tests there.
#     bash .ci/kernels_in_copy.sh PYTHON DIR [pytest args...]
# The environment picks the toolchain (CC, CXX, BCKD_CUDA, TORCH_CUDA_ARCH_LIST).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$1
DIR=$2
shift 2
rm -rf "$DIR"
mkdir -p "$DIR"
git ls-files -z | xargs -0 cp --parents -t "$DIR"
cd "$DIR"
"$PY" setup.py -q build_ext --inplace 2>&1 | grep -Ev "^\s*$|Deprecat|license|!!|\*\*\*\*|corresp|See https" | tail -5 || true
"$PY" - <<'PY'
import os

import torch

import bckd_kernels

assert bckd_kernels.HAS_EXTENSION, f"the kernels built here did not load: {bckd_kernels._ops.LOAD_ERROR}"
assert os.path.dirname(bckd_kernels.__file__) == os.path.abspath("bckd_kernels"), bckd_kernels.__file__
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("bckd::bin_cls_distill", "CUDA")
print(f"built: torch {torch.__version__}, CUDA kernels {'built' if cuda else 'not built'}")
if os.environ.get("BCKD_CUDA") == "1" and not cuda:
    raise SystemExit("BCKD_CUDA=1 but the CUDA kernels are not registered")
PY
"$PY" -m pytest -q -p no:cacheprovider "$@"
