"""The Triton kernels' three access patterns (bckd_kernels.triton.common.plan): locations
contiguous (NCHW maps, column-major rows and boxes), channels contiguous
(channels_last maps, contiguous rows and boxes) and any other strides, each
with the vector widths its sizes allow, against the float64 reference forward
and backward. On CPU tensors through the Triton interpreter (conftest), on CUDA
tensors when a GPU is there."""

import pytest
import torch
from conftest import DEVICES, HAS_CUDA, assert_matches, loc_shape

pytest.importorskip("triton")

from bckd_kernels import reference  # noqa: E402
from bckd_kernels.triton import bcdl, common, dfl, giou  # noqa: E402

ACCESS = {"strided": int(common.STRIDED), "locations": int(common.LOCATIONS), "channels": int(common.CHANNELS)}

pytestmark = [pytest.mark.kernels, pytest.mark.triton]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _values(shape, dtype, device, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def in_layout(x, layout):
    """x (same values) as: nchw / rows (contiguous), channels_last,
    rows_transposed (column-major rows), or a view that is none of them: strided (every other
    location of a wider buffer: no pattern applies), sliced (a channel slice of
    a wider map: the pattern of its layout, with the wider map's image stride),
    offset (contiguous from an element that is not 16-byte aligned)."""
    if layout in ("nchw", "rows"):
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "rows_transposed":
        return x.t().contiguous().t()
    if layout == "strided":
        big = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        return big[..., ::2]
    if layout == "sliced":
        big = torch.zeros((x.shape[0], x.shape[1] + 3, *x.shape[2:]), dtype=x.dtype, device=x.device)
        big[:, 1 : 1 + x.shape[1]] = x
        return big[:, 1 : 1 + x.shape[1]]
    if layout == "offset":
        flat = torch.zeros(x.numel() + 1, dtype=x.dtype, device=x.device)
        view = flat[1:].view(x.shape)
        view.copy_(x)
        return view
    raise ValueError(layout)


def _grads(fn, inputs, gout, wrt):
    inputs = [x.detach().requires_grad_() if i in wrt else x for i, x in enumerate(inputs)]
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    return (*out, *torch.autograd.grad(out[0], [inputs[i] for i in wrt], gout.to(out[0].dtype)))


def _check(triton_fn, ref_fn, inputs, gout, dtype, names, wrt=(0,)):
    out = _grads(triton_fn, inputs, gout, wrt)
    ref = _grads(ref_fn, [x.double() if x.is_floating_point() else x for x in inputs], gout.double(), wrt)
    lowp = _grads(lambda *a: ref_fn(*a, upcast=False), [x.to(dtype) if x.is_floating_point() else x for x in inputs],
                  gout, wrt)
    for name, a, r, lp in zip(names, out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)
    for i, g in zip(wrt, out[len(out) - len(wrt):]):
        if _dense(inputs[i]):
            assert g.stride() == inputs[i].stride(), "the gradient is written in the input's layout"


def _dense(x):
    return x.is_contiguous() or (x.dim() == 2 and x.t().is_contiguous()) or (
        x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


MAP_CASES = [
    # layout, shape, the access the plan must pick (for float32 inputs)
    ("nchw", (2, 80, 4, 8), "locations"),
    ("nchw", (2, 11, 5, 7), "locations"),
    ("channels_last", (2, 80, 3, 5), "channels"),
    ("channels_last", (1, 13, 3, 3), "channels"),
    ("rows", (37, 80), "channels"),
    ("rows_transposed", (40, 80), "locations"),
    ("rows_transposed", (37, 13), "locations"),
    ("strided", (2, 6, 3, 4), "strided"),
    ("sliced", (2, 80, 3, 4), "locations"),
    ("offset", (2, 80, 4, 8), "locations"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape, access", MAP_CASES)
def test_bin_cls_distill_layouts(device, dtype, layout, shape, access):
    s = in_layout(_values(shape, dtype, device, 0), layout)
    t = in_layout(_values(shape, dtype, device, 1), layout)
    assert common.plan(s, t, channels=shape[1]).access == ACCESS[access]
    w = torch.rand(loc_shape(s), generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    gout = _values(loc_shape(s), torch.float64, device, 3, 1.0)
    _check(lambda a, b, c: torch.ops.bckd.bin_cls_distill_triton(a, b, c.float(), 1.0),
           lambda a, b, c, **kw: reference.bin_cls_distill(a, b, c, 1.0, **kw),
           [s, t, w], gout, dtype, ("loss", "max_abs_diff", "grad"))


DFL_CASES = [
    ("nchw", (2, 68, 4, 8), 16, "locations"),
    ("channels_last", (2, 68, 3, 5), 16, "channels"),
    ("rows", (37, 68), 16, "channels"),
    ("rows", (5, 164), 40, "channels"),
    ("rows_transposed", (40, 68), 16, "locations"),
    ("channels_last", (1, 8, 2, 3), 1, "channels"),
    ("strided", (2, 68, 2, 3), 16, "strided"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape, reg_max, access", DFL_CASES)
def test_dfl_giou_distill_layouts(device, dtype, layout, shape, reg_max, access):
    s = in_layout(_values(shape, dtype, device, 4), layout)
    t = in_layout(_values(shape, dtype, device, 5), layout)
    assert common.plan(s, t, channels=shape[1]).access == ACCESS[access]
    gout = _values(loc_shape(s), torch.float64, device, 6, 1.0)
    _check(lambda a, b: torch.ops.bckd.dfl_giou_distill_triton(a, b, reg_max, 1e-6),
           lambda a, b, **kw: reference.dfl_giou_distill(a, b, reg_max, 1e-6, **kw),
           [s, t], gout, dtype, ("loss", "grad"))


def _boxes(n, dtype, device):
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    p = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10], 1)
    t = p + torch.randn(n, 4, generator=g, dtype=torch.float64)
    t[::7] = p[::7]
    return p.to(dtype).to(device), t.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, n, access", [("rows", 300, "channels"), ("rows", 301, "channels"), ("rows", 1, "channels"), ("rows_transposed", 300, "locations"),
                                                ("rows_transposed", 257, "locations"), ("strided", 300, "strided"), ("offset", 300, "channels")])
def test_paired_giou_layouts(device, dtype, layout, n, access):
    p, t = (in_layout(x, layout) for x in _boxes(n, dtype, device))
    assert giou.box_plan(p, t)[0] == ACCESS[access]
    gout = _values((n,), torch.float64, device, 8, 1.0)
    _check(lambda a, b: torch.ops.bckd.paired_giou_triton(a, b, 1e-6),
           lambda a, b, **kw: reference.paired_giou(a, b, **kw),
           [p, t], gout, dtype, ("loss", "grad_pred", "grad_target"), wrt=(0, 1))


def test_mixed_layouts_fall_back_to_any_strides():
    """A channels_last student with an NCHW teacher: no pattern suits both."""
    s = _values((2, 80, 3, 4), torch.float32, "cpu", 9).contiguous(memory_format=torch.channels_last)
    t = _values((2, 80, 3, 4), torch.float32, "cpu", 10)
    assert common.plan(s, t, channels=80).access == common.STRIDED
    if HAS_CUDA:
        s, t = s.cuda(), t.cuda()
    gout = _values((2, 3, 4), torch.float64, s.device, 11, 1.0)
    _check(lambda a, b: torch.ops.bckd.bin_cls_distill_triton(a, b, None, 1.0),
           lambda a, b, **kw: reference.bin_cls_distill(a, b, None, 1.0, **kw),
           [s, t], gout, torch.float32, ("loss", "max_abs_diff", "grad"))


@pytest.mark.parametrize("dtype, vec", [(torch.float32, 4), (torch.bfloat16, 8)])
def test_plan_vector_width(dtype, vec):
    """Vector widths (in elements) the plan passes for typical head maps: 16
    bytes, 8 for the DFL maps of 16-bit types (dfl.DFL_VECTOR_BYTES), none where
    the sizes do not allow it."""
    nchw = torch.empty(2, 80, 99, 167, dtype=dtype, device="meta")
    last = nchw.contiguous(memory_format=torch.channels_last)
    assert common.plan(last, last, channels=80)[2:4] == (common.CHANNELS, vec)
    assert common.plan(nchw, nchw, channels=80)[2:4] == (common.LOCATIONS, 1)  # 99 x 167 locations: odd
    even = torch.empty(2, 80, 100, 168, dtype=dtype, device="meta")
    assert common.plan(even, even, channels=80)[2:4] == (common.LOCATIONS, vec)
    reg = torch.empty(2, 68, 100, 168, dtype=dtype, device="meta").contiguous(memory_format=torch.channels_last)
    most = dfl.DFL_VECTOR_BYTES[reg.element_size()]
    assert common.plan(reg, reg, channels=68, most_bytes=most)[2:4] == (common.CHANNELS, 4)


def test_autotune_key_is_bucketed():
    """Location counts of one power-of-two bucket share one autotuning key."""
    assert len({common.bucket(n) for n in (22400, 25000, 32768)}) == 1
    for kernel in (bcdl._bcdl_fwd_kernel, bcdl._bcdl_bwd_kernel, giou._giou_fwd_kernel, giou._giou_bwd_kernel,
                   dfl._dfl_fwd_kernel, dfl._dfl_bwd_kernel):
        assert "n_bucket" in kernel.keys and "n_loc" not in kernel.keys


def test_reducing_kernels_tune_among_one_reduction_order():
    """The autotune rule of the kernels that reduce over a channel tile (what a
    GPU run keeps; under the interpreter there is one configuration): with
    locations contiguous only configurations of one vector of locations per
    thread, whose channel tile stays within the thread; otherwise the vector-
    fitting ones, or a single one where none fits (which spread a tile's
    channels alike: benchmarks/triton_compile.py --check compares them)."""
    import triton

    blocks = list(common.PRESETS["dfl"].blocks)
    configs = [triton.Config({"BLOCK_L": b}, num_warps=w) for b, w in blocks + common.IN_THREAD]
    prune = common.vector_fit(common.PRESETS["dfl"].lanes, blocks, reduces=True)
    for vec in (1, 2, 4):
        kept = prune(configs, {}, ACCESS=common.LOCATIONS, VEC=vec, NB=dfl.bins_block(17, common.LOCATIONS, vec))
        assert len(kept) == 2 and all(c.kwargs["BLOCK_L"] == vec * 32 * c.num_warps for c in kept)
    kept = prune(configs, {}, ACCESS=common.CHANNELS, VEC=4, NB=32)
    assert [(c.kwargs["BLOCK_L"], c.num_warps) for c in kept] == blocks
    assert len(prune(configs, {}, ACCESS=common.CHANNELS, VEC=4, NB=8)) == 1  # 1 or 2 elements per thread: none fits
    plain = common.vector_fit(common.PRESETS["dfl"].lanes, blocks, reduces=False)
    assert len(plain(configs[:2], {}, ACCESS=common.CHANNELS, VEC=4, NB=8)) == 2
