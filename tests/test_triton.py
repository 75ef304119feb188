"""What only the Triton kernels have: the functional layer's backend="triton" and
its compiled graph. The operator tests (tests/test_bin_cls_distill.py,
tests/test_giou.py) run the Triton operators through the ``backend`` fixture,
on CPU tensors through the Triton interpreter (conftest turns it on without a
GPU), on CUDA tensors when a GPU is there."""

import pytest
import torch
from conftest import HAS_CUDA, assert_compiles, box_pairs, make

triton = pytest.importorskip("triton")

import bckd_kernels  # noqa: E402

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
