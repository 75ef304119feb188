#!/usr/bin/env bash
# Creates .venv (if missing) with torch, the test and benchmark tools, and
# builds the kernels in place. Extra environment: BCKD_CUDA=0|1 (see setup.py),
# PYTHON (the interpreter that creates the venv, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q numpy pytest matplotlib
.venv/bin/python -m pip install -q -e . --no-build-isolation
.venv/bin/python - <<'PY'
import os

import torch

import bckd_kernels

assert bckd_kernels.HAS_COMPILED, "the compiled kernels did not load"
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("bckd::bin_cls_distill", "CUDA")
print(f"bckd ready: torch {torch.__version__}, CUDA kernels {'built' if cuda else 'not built'}")
if os.environ.get("BCKD_CUDA") == "1" and not cuda:
    raise SystemExit("BCKD_CUDA=1 but the CUDA kernels are not registered")
PY
