import dataclasses
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; it must be on
    # before any module defining @triton.jit kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import bckd_kernels  # noqa: E402
from bckd_kernels import _contract  # noqa: E402
from bckd_kernels.functional import BACKENDS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
# A test or parameter that needs a CUDA GPU carries the cuda marker (benchmarks/gpu_run.sh
# selects it); without a GPU it is skipped (pytest_collection_modifyitems below).
needs_cuda = pytest.mark.cuda
needs_extension = pytest.mark.skipif(not bckd_kernels.HAS_EXTENSION, reason="the bckd extension did not load")

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend of bckd_kernels' functional losses whose kernels the tests check
    against the reference: "cpu" and "cuda" run the extension's C++ and CUDA
    kernels, "triton" the Triton kernels (on CUDA tensors with a GPU, through the
    interpreter on CPU tensors without one)."""

    functional: str  # the backend argument of the functional losses, one of BACKENDS
    device: str  # where the tests put its tensors

    @property
    def implementation(self):
        """What runs: "extension" (the C++ or CUDA kernels) or "triton"."""
        return "triton" if self.functional == "triton" else "extension"

    @property
    def interpreted(self):
        return self.implementation == "triton" and self.device == "cpu"

    def op(self, name):
        """torch.ops.bckd.<name> (forward or backward op), or its Triton twin <name>_triton."""
        if self.implementation == "extension":
            return getattr(torch.ops.bckd, name)
        import bckd_kernels.triton  # noqa: F401  (registers the *_triton ops)

        return getattr(torch.ops.bckd, name + "_triton")

    @property
    def opcheck_tests(self):
        """The torch.library.opcheck checks this backend can take: the Triton
        interpreter cannot run on fake tensors, which the others need."""
        if self.interpreted:
            return ("test_schema", "test_autograd_registration")
        return ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")

    def require_compiler(self):
        """Skips under the Triton interpreter, which torch.compile cannot trace."""
        if self.interpreted:
            pytest.skip("torch.compile traces the Triton kernels, not the Triton interpreter")

    def require(self, dtype):
        """Skips where the backend does not take dtype."""
        if self.implementation == "triton" and dtype == torch.float64:
            pytest.skip("the Triton kernels take float32, float16 and bfloat16, not float64")


needs_triton = [pytest.mark.triton, pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")]
_KERNEL_BACKEND = {  # functional backend: (device, marks)
    "cpu": ("cpu", [needs_extension]),
    "cuda": ("cuda", [needs_extension, needs_cuda]),
    "triton": ("cuda" if HAS_CUDA else "cpu", needs_triton),
}
# The backends of bckd_kernels' functional losses (BACKENDS) whose kernels are checked:
# all but "auto", which picks one of them, and "reference", what they are checked against.
KERNEL_BACKENDS = [
    pytest.param(Backend(name, _KERNEL_BACKEND[name][0]), id=name, marks=_KERNEL_BACKEND[name][1])
    for name in BACKENDS if name not in ("auto", "reference")
]
# Those whose tensors are on a CUDA GPU (the Triton kernels' too on a machine that has one).
CUDA_KERNEL_BACKENDS = [p for p in KERNEL_BACKENDS if p.values[0].device == "cuda"]
# Each implementation of the operators on the device it runs on, as (implementation,
# device), for the tests that call the operators themselves: the kernel backends'
# implementations, the extension's fake kernels on meta tensors, and the reference.
IMPLEMENTATIONS = [
    *(pytest.param(p.values[0].implementation, p.values[0].device, id=p.id, marks=p.marks) for p in KERNEL_BACKENDS),
    pytest.param("extension", "meta", id="meta", marks=needs_extension),
    pytest.param("reference", "cpu", id="reference"),
]


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    """Each test that takes it runs once per kernel backend."""
    return request.param


def pytest_collection_modifyitems(config, items):
    """Without a CUDA GPU, tests and parameters marked cuda are skipped."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# Floor of the error allowed against the float64 reference, relative to the
# largest reference value; the rest of the budget is twice plain PyTorch's
# own error at the same precision (the flash-attention rule).
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_matches(actual, ref64, ref_lowp, dtype, what=""):
    """|actual − ref64| ≤ 2·|ref_lowp − ref64| + floor, in the max norm.

    Where plain PyTorch at low precision overflows (float16 box areas above
    65504) its error is unbounded and bounds nothing: those entries leave the
    low-precision error out, and the kernel, which accumulates in float32, is
    held to the floor there."""
    assert actual.shape == ref64.shape, (what, actual.shape, ref64.shape)
    actual = actual.double()
    ref64 = ref64.double()
    if not actual.numel():
        return
    err = (actual - ref64).abs().max().item()
    lowp_err = (ref_lowp.double() - ref64).abs()
    base = lowp_err[lowp_err.isfinite()].max().item() if lowp_err.isfinite().any() else 0.0
    scale = max(ref64.abs().max().item(), 1.0)
    bound = 2 * base + FLOOR[dtype] * scale
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (torch's own error {base:.3g})"


def assert_compiles(fn, a, b):
    """torch.compile(fn, fullgraph=True) (inductor on a GPU, aot_eager on the CPU)
    gives the scalar fn(a, b) and its gradient to a as eager fn does."""
    backend = "inductor" if a.device.type == "cuda" else "aot_eager"
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    fn(a1, b).backward()
    out = compiled(a2, b)
    out.backward()
    torch.testing.assert_close(out, fn(a, b))
    torch.testing.assert_close(a1.grad, a2.grad)


def as_layout(x, layout):
    """Returns x (same values) in the given memory layout.

    rows / nchw: contiguous; rows_transposed: column-major [N, C];
    channels_last: [B, C, H, W] with channels contiguous; rows_strided /
    nchw_strided: a non-contiguous view of a larger buffer.
    """
    if layout in ("rows", "nchw"):
        return x.contiguous()
    if layout == "rows_transposed":
        return x.t().contiguous().t()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout in ("rows_strided", "nchw_strided"):
        pad = list(x.shape)
        pad[-1] = pad[-1] * 2 + 1
        big = torch.zeros(pad, dtype=x.dtype, device=x.device)
        big[..., 1::2][..., : x.shape[-1]] = x
        return big[..., 1::2][..., : x.shape[-1]]
    raise ValueError(layout)


loc_shape = _contract.location_shape  # [N] or [B, H, W] for a [N, C] or [B, C, H, W] map


def make(shape, layout, dtype, device, *, scale=3.0, seed=0, weight=True):
    """(student, teacher, weight or None, grad_output): random maps of the given shape
    in the given memory layout, a random per-location weight and a random (non-unit)
    upstream gradient, drawn in that order from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    loc = loc_shape(s)
    w = torch.rand(loc, generator=g, dtype=torch.float64).to(device) if weight else None
    gout = torch.randn(loc, generator=g, dtype=torch.float64)
    return as_layout(s.to(device), layout), as_layout(t.to(device), layout), w, gout.to(device)


def make_reg(shape, layout, dtype, device, seed=0):
    """(student, teacher, grad_output): regression maps of 4 · (reg_max + 1) channels."""
    s, t, _, gout = make(shape, layout, dtype, device, scale=2.0, seed=seed, weight=False)
    return s, t, gout


def random_boxes(n, generator, scale=10.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale + 0.1
    return torch.cat([xy, xy + wh], dim=1)


def box_pairs(n=97, seed=0):
    """Float64 (pred, target) boxes [n, 4]: overlapping, disjoint, nested and equal
    pairs, plus exact ties of coordinates."""
    g = torch.Generator().manual_seed(seed)
    p, t = random_boxes(n, g), random_boxes(n, g)
    t[::7] = p[::7]
    t[1::5, 0::2] += (p[1::5, 0] - t[1::5, 0]).unsqueeze(1)  # same x1
    t[2::6, 1::2] += (p[2::6, 3] - t[2::6, 3]).unsqueeze(1)  # same y2
    return p, t
