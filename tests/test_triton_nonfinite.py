"""Non-finite DFL bins (−inf, +inf, NaN) against the reference, forward and backward.

The Triton DFL kernels decode an edge with an online softmax, reading its bins
up to 32 at a time with a running max: a first chunk of −inf bins once made
exp(−inf − (−inf)) = NaN and poisoned the edge (issue 25), which only bins
read in more than one chunk (reg_max ≥ 32) could show. These run on every
backend of the operators (conftest's ``backend`` fixture: the C++ kernels and
the Triton ones, through the interpreter without a GPU), at 31, 32, 63 and 64,
with the rows contiguous (the Triton kernels read channels contiguous) and
column-major (locations contiguous).

What the reference gives is what the kernels must give: where it is finite,
finite and close; where its loss is NaN (an edge of −inf bins only, a +inf or a
NaN bin), NaN. The reference's gradient of such a location is NaN in every
bin, the kernels' in the bins of at least one edge: the GIoU gradient they
share (csrc/bckd_math.h) keeps its guards, which give 0 for some coordinates
of a NaN box instead of multiplying a NaN through, so the gradient is held to
"some NaN in that location", and to the reference in every bin where the
reference is finite."""

import pytest
import torch
from conftest import as_layout, assert_matches

import bckd_kernels
from bckd_kernels import reference

# The interpreter computes in numpy, which warns on the NaN the inputs ask for.
pytestmark = [pytest.mark.kernels, pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

INF, NAN = float("inf"), float("nan")
ROWS = 9


def _inputs(reg_max):
    """(student, teacher) float64 rows [ROWS, 4·(reg_max + 1)], one case a row."""
    nb = reg_max + 1
    g = torch.Generator().manual_seed(reg_max)
    s = torch.randn(ROWS, 4 * nb, generator=g, dtype=torch.float64) * 2
    t = torch.randn(ROWS, 4 * nb, generator=g, dtype=torch.float64) * 2
    s[0, :32] = -INF                       # the first 32 bins of edge 0 (all of them at reg_max 31)
    s[1, 3 * nb - 32 : 3 * nb] = -INF      # the last 32 bins of edge 2
    s[2, nb : 2 * nb - 1] = -INF           # all but the last bin of edge 1
    t[3, 3 * nb : 3 * nb + 32] = -INF      # the teacher's first 32 bins of edge 3
    s[4, nb : 2 * nb] = -INF               # every bin of edge 1: NaN
    s[5, 3 * nb - 1] = INF                 # +inf in edge 2's last bin: NaN
    s[6, 2 * nb - 2] = NAN                 # NaN in edge 1: NaN
    # row 7: finite
    t[8, 5] = NAN                          # NaN in the teacher
    return s, t


def _run(fn, s, t, reg_max, gout):
    s = s.detach().requires_grad_()
    loss = fn(s, t, reg_max, 1e-6)
    (g,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return loss, g


@pytest.mark.parametrize("layout", ["rows", "rows_transposed"])
@pytest.mark.parametrize("reg_max", [31, 32, 63, 64])
def test_dfl_nonfinite_bins_match_reference(backend, reg_max, layout):
    device = backend.device
    s, t = _inputs(reg_max)
    gout = torch.linspace(0.5, 1.5, ROWS, dtype=torch.float64)
    loss_r, grad_r = _run(reference.dfl_giou_distill, s, t, reg_max, gout)
    lowp = _run(lambda *a: reference.dfl_giou_distill(*a, upcast=False), s.float(), t.float(), reg_max, gout)
    sf, tf = (as_layout(x.float().to(device), layout) for x in (s, t))
    loss, grad = (x.cpu() for x in _run(backend.op("dfl_giou_distill"), sf, tf, reg_max, gout.to(device)))

    nan_rows = loss_r.isnan()
    assert nan_rows.any() and not nan_rows.all()
    if reg_max >= 32:
        assert loss_r[[0, 1, 2, 3]].isfinite().all(), "chunks of −inf beside a finite bin decode finitely"
    assert torch.equal(loss.isnan(), nan_rows), (loss, loss_r)
    ok = loss_r.isfinite()
    assert loss[ok].isfinite().all()
    assert_matches(loss[ok], loss_r[ok], lowp[0][ok], torch.float32, "loss")

    assert torch.equal(grad.isnan().any(1), grad_r.isnan().any(1))
    fin = grad_r.isfinite()
    assert grad[fin].isfinite().all()
    assert_matches(grad[fin], grad_r[fin], lowp[1][fin], torch.float32, "grad")


def test_ildl_first_chunk_of_minus_inf(backend):
    """The issue's repro, through the functional loss: finite, as the reference."""
    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(4, 132, generator=g) for _ in range(2))
    s[:, :32] = -INF  # the first 32 of edge 0's 33 bins
    ref = bckd_kernels.ildl_loss(s, t, reg_max=32, reduction="none", loss_weight=1.0, backend="reference")
    s = s.to(backend.device).requires_grad_()
    out = bckd_kernels.ildl_loss(s, t.to(backend.device), reg_max=32, reduction="none", loss_weight=1.0,
                                 backend=backend.functional)
    out.sum().backward()
    assert out.isfinite().all() and s.grad.isfinite().all()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)
