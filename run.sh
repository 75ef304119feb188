#!/usr/bin/env bash
# One command from a fresh clone: set up .venv, build the kernels, and run the
# loss benchmark (fused kernels vs reference PyTorch) on this machine.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/python benchmarks/bench_losses.py --quick "$@"
