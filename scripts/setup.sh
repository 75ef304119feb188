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
.venv/bin/python -c "import bckd_kernels, torch; assert bckd_kernels.HAS_COMPILED; print('bckd ready: torch', torch.__version__)"
