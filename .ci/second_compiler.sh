#!/usr/bin/env bash
# The CPU kernels built with a second compiler, Debian's clang-16, in a copy of
# the sources, and the CPU kernel tests run on that build: a construct one
# toolchain accepts and another refuses (a target pragma over library headers,
# which GCC 12 takes and GCC 13 and clang do not) fails here, not on a user's
# machine. The Triton cases of those tests are left out: this build does not
# change them. Needs .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang++-16 >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "clang-16 is missing: apt-get install clang-16 libomp-16-dev" >&2
    exit 1
  fi
  apt-get update -qq && apt-get install -y -qq clang-16 libomp-16-dev >/dev/null
fi
CC=clang-16 CXX=clang++-16 BCKD_CUDA=0 bash .ci/kernels_in_copy.sh "$PWD/.venv/bin/python" \
    "${TMPDIR:-/tmp}/bckd-clang" tests/test_bin_cls_distill.py tests/test_cpu_layouts.py tests/test_giou.py tests/test_reliability.py -k "not cuda" -m "not triton"
