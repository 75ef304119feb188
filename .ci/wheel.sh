#!/usr/bin/env bash
# CI: the package as users install it. From the tracked files: an sdist that
# holds every file under csrc/, a wheel built from that sdist (so the sdist
# alone builds) with the kernels this environment can build (BCKD_CUDA as in
# setup.py; CI sets 1), then a fresh virtual environment with only torch, the
# wheel installed without dependencies, and each op run forward and backward
# from outside the source tree. Run from the repository root after
# scripts/setup.sh has made .venv.
# The CUDA kernels are built so that the check covers what GPU users install
# (they link and register with nothing but torch's own CUDA libraries); they
# are the slow step, about 90 s on 2 cores. BCKD_CUDA=0 gives a CPU-only wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=$(pwd)/.venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
stamp() { echo "wheel.sh: $1 ($((SECONDS - start)) s)"; }

# A copy of the tracked files, so nothing built or cached in the checkout
# (build/, *.egg-info, the in-place _C*.so) can leak into the sdist.
mkdir "$WORK/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
if ! (cd "$WORK/src" && "$PY" setup.py -q sdist -d "$WORK/dist" >"$WORK/sdist.log" 2>&1); then
  cat "$WORK/sdist.log" >&2
  exit 1
fi
sdist=$(ls "$WORK"/dist/bckd-*.tar.gz)
missing=$(comm -23 <(git ls-files csrc | sort) <(tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort))
if [ -n "$missing" ]; then
  echo "wheel.sh: the sdist lacks files the build needs:" >&2
  echo "$missing" >&2
  exit 1
fi
stamp "sdist $(basename "$sdist") has all $(git ls-files csrc | wc -l) files under csrc/"

"$PY" -m pip wheel -q "$sdist" --no-build-isolation --no-deps -w "$WORK/dist"
wheel=$(ls "$WORK"/dist/bckd-*.whl)
stamp "built $(basename "$wheel") from the sdist"

torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "torch==$torch_version"
"$WORK/venv/bin/python" -m pip install -q --no-deps "$wheel"
stamp "fresh venv with torch $torch_version and the wheel"

cd "$WORK"  # so that the checkout's bckd_kernels cannot be the one imported
BCKD_CUDA=${BCKD_CUDA:-} "$WORK/venv/bin/python" - <<'PY'
import os
import sys

import torch

import bckd_kernels
from bckd_kernels import reference

assert bckd_kernels.__file__.startswith(sys.prefix), f"imported {bckd_kernels.__file__}, not the wheel's"
assert bckd_kernels.HAS_EXTENSION, f"the bckd extension did not load: {bckd_kernels._ops.LOAD_ERROR}"
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("bckd::bin_cls_distill", "CUDA")
assert cuda or os.environ["BCKD_CUDA"] != "1", "built with BCKD_CUDA=1 but the wheel has no CUDA kernels"

g = torch.Generator().manual_seed(0)


def randn(*shape, grad=False):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


s, t = randn(6, 5, grad=True), randn(6, 5)
rs, rt = randn(6, 4 * 17, grad=True), randn(6, 4 * 17)
pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]], dtype=torch.float64, requires_grad=True)
target = torch.tensor([[1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
cases = {  # name: (the extension op, its reference, the input that gets a gradient)
    "bin_cls_distill": (
        lambda: torch.ops.bckd.bin_cls_distill(s, t, None, 1.0)[0],
        lambda: reference.bin_cls_distill(s, t, None, 1.0)[0],
        s,
    ),
    "paired_giou": (
        lambda: torch.ops.bckd.paired_giou(pred, target, 1e-6),
        lambda: reference.paired_giou(pred, target, 1e-6),
        pred,
    ),
    "dfl_giou_distill": (
        lambda: torch.ops.bckd.dfl_giou_distill(rs, rt, 16, 1e-6),
        lambda: reference.dfl_giou_distill(rs, rt, 16, 1e-6),
        rs,
    ),
}
for name, (op, ref, leaf) in cases.items():
    results = []
    for fn in (op, ref):
        leaf.grad = None
        out = fn()
        (out * torch.linspace(0.5, 2.0, out.numel(), dtype=out.dtype)).sum().backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[0], results[1])
    print(f"wheel.sh: {name} forward and backward match the reference")
print(
    f"wheel.sh: bckd {bckd_kernels.__version__} from {os.path.dirname(bckd_kernels.__file__)}, "
    f"torch {torch.__version__}, CUDA kernels {'included' if cuda else 'not built'}"
)
PY
stamp "done"
