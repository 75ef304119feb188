"""What only the Triton kernels have: the functional layer's backend="triton" and
its compiled graph. The operator tests (tests/test_bin_cls_distill.py,
tests/test_giou.py) run the Triton operators through the ``backend`` fixture,
on CPU tensors through the Triton interpreter (conftest turns it on without a
GPU), on CUDA tensors when a GPU is there."""

import pytest
import torch
from conftest import HAS_CUDA, as_layout, assert_compiles, box_pairs, make

triton = pytest.importorskip("triton")

import bckd_kernels  # noqa: E402
import bckd_kernels.triton  # noqa: E402, F401  (registers the *_triton operators)

DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = [pytest.mark.kernels, pytest.mark.triton]


def test_functional_backend_equals_reference():
    s, t, w, _ = make((2, 11, 5, 7), "nchw", torch.float32, DEVICE, scale=2.0)
    a = bckd_kernels.bcdl_loss(s, t, w, backend="triton")
    b = bckd_kernels.bcdl_loss(s, t, w, backend="reference")
    torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("loss", ["bcdl", "giou", "ildl"])
def test_functional_compile_fullgraph_cuda(loss):
    if loss == "giou":
        a, b = (x.float().cuda() for x in box_pairs(1000, seed=2))
        fn = lambda x, y: bckd_kernels.giou_loss(x, y, backend="triton")  # noqa: E731
    else:
        shape = (2, 80, 20, 24) if loss == "bcdl" else (2, 68, 20, 24)
        a, b, _, _ = make(shape, "nchw", torch.float32, "cuda", scale=2.0)
        f = bckd_kernels.bcdl_loss if loss == "bcdl" else bckd_kernels.ildl_loss
        fn = lambda x, y: f(x, y, backend="triton")  # noqa: E731
    assert_compiles(fn, a, b)


@pytest.mark.parametrize("layout", ["rows", "rows_transposed"])
@pytest.mark.parametrize("mask", [(True, False), (False, True), (False, False)])
def test_giou_backward_output_mask(layout, mask):
    """The Triton GIoU backward's output_mask, the C++ op's rule: a wanted
    gradient is bit for bit the full backward's, an unwanted one is neither
    computed nor written (an empty tensor: an inferred schema returns Tensors)."""
    p, t = (as_layout(x.float().to(DEVICE), layout) for x in box_pairs(37))
    g = torch.randn(37, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    backward = torch.ops.bckd._paired_giou_backward_triton
    full = backward(g, p, t, 1e-6)
    for wanted, got, ref in zip(mask, backward(g, p, t, 1e-6, list(mask)), full):
        if wanted:
            assert got.stride() == ref.stride() and torch.equal(got, ref)
        else:
            assert got.numel() == 0


@pytest.mark.parametrize("wrt", [(0,), (1,), (0, 1)])
def test_giou_autograd_asks_only_for_the_gradients_needed(wrt):
    """Autograd passes which boxes need a gradient as the backward's output_mask."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Masks(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.bckd._paired_giou_backward_triton.default:
                # the dispatcher leaves out an argument equal to its default, None: both
                self.seen.append(list(args[4]) if len(args) > 4 and args[4] is not None else [True, True])
            return func(*args, **(kwargs or {}))

    boxes = [x.float().to(DEVICE) for x in box_pairs(37)]
    inputs = [x.requires_grad_() if i in wrt else x for i, x in enumerate(boxes)]
    g = torch.randn(37, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with Masks() as masks:
        torch.ops.bckd.paired_giou_triton(*inputs, 1e-6).backward(g)
    assert masks.seen == [[i in wrt for i in range(2)]]
    full = torch.ops.bckd._paired_giou_backward_triton(g, *boxes, 1e-6)
    for i in range(2):
        assert (inputs[i].grad is not None) == (i in wrt)
        if i in wrt:
            assert torch.equal(inputs[i].grad, full[i])


IMPORT_ALONE = """
import os, sys, types, warnings
os.environ["TRITON_INTERPRET"] = "1"
import torch
package = types.ModuleType("bckd_kernels")  # the package without its __init__
package.__path__ = [sys.argv[1]]
sys.modules["bckd_kernels"] = package
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import bckd_kernels.triton
    s = torch.randn(3, 5, requires_grad=True)
    loss, _ = torch.ops.bckd.bin_cls_distill_triton(s, torch.randn(3, 5), None, 1.0)
    loss.sum().backward()
loaded = [m for m in ("bckd_kernels._ops", "bckd_kernels._C") if m in sys.modules]
about = [str(w.message) for w in caught if "bckd" in str(w.message) or "extension" in str(w.message)]
print(loaded, about, bool(s.grad.abs().sum() > 0))
"""


def test_triton_users_are_not_warned_about_a_missing_extension():
    """Without the extension, importing bckd_kernels.triton and running its ops warns
    nothing (the extension is bckd_kernels' own and the Triton ops never call it)."""
    import subprocess
    import sys

    code = (
        "import sys, warnings, torch\n"
        "sys.modules['bckd_kernels._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import bckd_kernels.triton\n"
        "    s = torch.randn(3, 5, requires_grad=True)\n"
        "    bckd_kernels.bcdl_loss(s, torch.randn(3, 5), backend='triton').backward()\n"
        "about = [str(x.message) for x in w if 'extension' in str(x.message)]\n"
        "print(bckd_kernels.HAS_EXTENSION, about, bool(s.grad.abs().sum() > 0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split("\n")[-2] == "False [] True", proc.stdout + proc.stderr[-4000:]


def test_the_triton_package_needs_no_extension():
    """Importing bckd_kernels.triton (its ops and their autograd) loads neither
    the extension nor its loader, bckd_kernels._ops, and warns nothing about
    them: in a fresh process, the package alone (bckd_kernels' own __init__,
    which loads the extension for the functional API, left out), an op runs
    forward and backward."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", IMPORT_ALONE, os.path.dirname(bckd_kernels.__file__)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split("\n")[-2] == "[] [] True", proc.stdout + proc.stderr[-4000:]
