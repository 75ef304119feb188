"""What the Triton ops share: the access patterns and their planning, the
autotune presets, the jit helpers that walk memory, and the autograd rule of
the backward ops.

Access. Each operator picks one of three access patterns per call, from the
strides (``plan``, the constexpr ``ACCESS``):

- ``LOCATIONS``, locations contiguous (NCHW maps, column-major ``[N, C]``): a
  tile's contiguous dimension is the locations; each access reads VEC
  neighbouring locations of one channel;
- ``CHANNELS``, channels contiguous (channels_last maps, contiguous ``[N, C]``):
  a tile's contiguous dimension is the channels; each access reads VEC
  channels of one location;
- ``STRIDED``, any other strides: the same maths, element by element.

The sizes and strides a vector access steps over are passed divided by VEC and
multiplied back in the kernel (``units``), so that the compiler knows they are
multiples of VEC: it specialises integer arguments only for 1 and for multiples
of 16, which a map of 100 x 167 locations or a row of 68 channels is not. VEC
is the widest such multiple up to 16 bytes; with pointers aligned to 16 bytes
(Triton checks that itself) loads and stores are then VEC wide. Programs never
straddle two images, so that a tile of locations is one run of memory.
"""

import contextlib
import math
import os
from typing import Callable, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .. import _contract

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The values of the constexpr ACCESS (constexpr objects, so that @triton.jit code
# can read them; the host passes them as ints).
STRIDED = tl.constexpr(0)
LOCATIONS = tl.constexpr(1)
CHANNELS = tl.constexpr(2)


# ------------------------------------------------------------- autotune ----
#
# Reductions over a tile's channels (the BCDL forward's sum and max over a
# class tile, the DFL decode's over a tile of bins) add in an order set by how
# the compiler spreads the tile over registers, lanes and warps, which it
# derives from BLOCK_L and num_warps. Two configurations that spread the
# channels differently give different bits, and the autotuner, which picks by
# timing, may pick either in another process. So a reducing kernel tunes only
# among configurations that spread the channels alike, per access pattern:
#   CHANNELS, STRIDED  channels fastest: the compiler gives the channel axis its
#         threads first, the same for every BLOCK_L, as long as each thread's
#         vector (sizePerThread) is the same: the configurations that give each
#         thread VEC to 2·VEC elements (1 to 4 without vectors), or one if none
#         does; STRIDED one configuration always, as triton 3.6 spreads the
#         channels differently for BLOCK_L 16 and 32 there;
#   LOCATIONS  locations fastest: the lanes and warps go to the locations first,
#         so the channels stay within one thread only when BLOCK_L = VEC · 32 ·
#         num_warps (each thread holds one vector of locations and the tile's
#         channels; the channel tile is made narrow for it, bcdl.block_c,
#         dfl.bins_block): those configurations (IN_THREAD) and no others.
# benchmarks/triton_compile.py --check compares the layouts of every reduction
# across the configurations kept for each pattern and fails if they differ.
IN_THREAD = [(v * 32 * w, w) for w in (2, 4) for v in (1, 2, 4, 8)]


class Preset(NamedTuple):
    """The autotune configurations of one family of kernels: ``blocks``, the
    (BLOCK_L, num_warps) candidates; ``interpret_block``, the one BLOCK_L under
    the interpreter; ``lanes(kwargs)``, the tile's width beside BLOCK_L;
    ``maxnreg``, ptxas's register limit, where its own target spilled (the DFL
    kernels on sm_90 spill without it)."""

    blocks: tuple
    interpret_block: int
    lanes: Callable
    maxnreg: Optional[int] = None


PRESETS = {
    "bcdl": Preset(((32, 4), (64, 4), (128, 4)), 64, lambda kwargs: kwargs["BLOCK_C"]),
    "giou": Preset(((256, 4), (512, 4), (1024, 4), (512, 8)), 256,
                   lambda kwargs: 4 if kwargs["ACCESS"] == CHANNELS else 1),
    "dfl": Preset(((16, 4), (32, 4)), 64, lambda kwargs: kwargs["NB"], maxnreg=160),
}


def configs(blocks, interpret_block, maxnreg=None):
    """Autotune configurations (BLOCK_L, num_warps); one under the interpreter."""
    if INTERPRET:
        return [triton.Config({"BLOCK_L": interpret_block}, num_warps=4)]
    return [triton.Config({"BLOCK_L": b}, num_warps=w, maxnreg=maxnreg) for b, w in blocks]


def per_thread(c, lanes, kwargs):
    """Elements of a tile per thread under configuration c."""
    return c.kwargs["BLOCK_L"] * lanes(kwargs) / (32 * c.num_warps)


def vector_fit(lanes, blocks, reduces):
    """An early_config_prune keeping the configurations of ``blocks`` whose tile
    gives each thread VEC to 2·VEC elements of a load (1 to 4 without vectors):
    fewer would shorten the vector accesses (the compiler spreads a tile over
    all threads first), more only adds registers. ``lanes(kwargs)`` is the
    tile's width beside BLOCK_L. A kernel that ``reduces`` over the tile's
    channels keeps, with locations contiguous, the IN_THREAD configurations
    instead, and where no configuration fits, one (see above)."""
    tiled = set(blocks)

    def prune(configs, named_args, **kwargs):
        vec = kwargs.get("VEC", 1)
        if reduces and kwargs.get("ACCESS") == LOCATIONS:
            fit = [c for c in configs if c.kwargs["BLOCK_L"] == vec * 32 * c.num_warps]
            return fit or configs[:1]  # the interpreter's one configuration
        pool = [c for c in configs if (c.kwargs["BLOCK_L"], c.num_warps) in tiled] or configs
        most = 2 * vec if vec > 1 else 4
        fit = [c for c in pool if vec <= per_thread(c, lanes, kwargs) <= most]
        if not reduces:
            return fit or pool
        if fit and kwargs.get("ACCESS") == CHANNELS:
            return fit
        # Element by element, triton 3.6 spreads the channels over 2 lanes at
        # BLOCK_L 16 and over 1 at 32, with one sizePerThread: one configuration.
        return [min(fit or pool, key=lambda c: abs(math.log2(per_thread(c, lanes, kwargs) / vec)))]

    return prune


def autotune(family, *key, reduces=False):
    """triton.autotune over the preset of ``family`` (PRESETS), plus the
    IN_THREAD configurations for a kernel that ``reduces`` over its channels,
    keyed by the location count's bucket, the access pattern, VEC and ``key``
    (the kernel's other constexprs that change its code)."""
    p = PRESETS[family]
    every = list(p.blocks) + ([b for b in IN_THREAD if b not in p.blocks] if reduces else [])
    return triton.autotune(configs=configs(every, p.interpret_block, p.maxnreg),
                           key=["n_bucket", *key, "ACCESS", "VEC"],
                           prune_configs_by={"early_config_prune": vector_fit(p.lanes, p.blocks, reduces)})


# ---------------------------------------------------------- jit helpers ----


@triton.jit
def max_nan(a, b):
    """max(a, b) that keeps NaN (tl.maximum's default and tl.max drop it); also
    the combine function of a max reduction that keeps NaN."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def units(x, VEC: tl.constexpr):
    """x · VEC as int64, for a size or stride passed in units of VEC."""
    return x * tl.full((), VEC, tl.int64)


@triton.jit
def program_locations(HW, ACCESS: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's image b, its locations hw within the image, their index in
    the per-location tensors and their mask (64-bit)."""
    if ACCESS == LOCATIONS:
        n_hw = units(HW, VEC)
    else:
        n_hw = units(HW, 1)
    blocks = tl.cdiv(n_hw, BLOCK_L)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // blocks
    hw = (pid - b * blocks) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    return b, hw, b * n_hw + hw, hw < n_hw


@triton.jit
def row_offsets(b, hw, W, sb, sh, sw, ACCESS: tl.constexpr, VEC: tl.constexpr):
    """Offset of each location's channel 0."""
    if ACCESS == LOCATIONS:
        return b * units(sb, VEC) + hw
    elif ACCESS == CHANNELS:
        return b * units(sb, VEC) + hw * units(sw, VEC)
    else:
        return b * sb + (hw // W) * sh + (hw % W) * sw


@triton.jit
def channel_stride(sc, ACCESS: tl.constexpr, VEC: tl.constexpr):
    if ACCESS == LOCATIONS:
        return units(sc, VEC)
    elif ACCESS == CHANNELS:
        return 1
    else:
        return units(sc, 1)


@triton.jit
def channel_count(C, ACCESS: tl.constexpr, VEC: tl.constexpr):
    if ACCESS == CHANNELS:
        return units(C, VEC)
    else:
        return units(C, 1)


# ------------------------------------------------------------ host side ----


def per_location(op, v, name, like):
    """A checked per-location tensor as the contiguous float32 vector the kernels read."""
    _contract.check_per_location(op, v, name, like)
    return v.to(torch.float32).contiguous()


def device_guard(x):
    """Launches on the inputs' GPU, not the current one (inductor's generated
    code guards the device itself when compiling)."""
    if x.is_cuda and not torch.compiler.is_compiling():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def pow2_dividing(values, most):
    """The largest power of two ≤ most that divides every value (0 included)."""
    v = most
    while v > 1 and any(x % v for x in values):
        v //= 2
    return v


class Plan(NamedTuple):
    """How the kernels walk rows ``[N, C]`` or maps ``[B, C, H, W]``: ``images``
    runs of ``HW`` locations (``H`` rows of ``W``), the access pattern
    (``access``: LOCATIONS, CHANNELS or STRIDED), the vector width ``vec`` in
    elements, and the kernel arguments, sizes and strides in units of ``vec``
    where the pattern steps over them: ``hw`` (locations per image), ``W``,
    ``n_ch`` (the channels a row holds) and ``strides`` (sb, sh, sw, sc) per
    tensor."""

    images: int
    HW: int
    access: int
    vec: int
    hw: int
    W: int
    n_ch: int
    strides: list


def plan(*xs, channels, most_bytes=16):
    """The access plan for same-shape tensors ``xs`` (inputs and outputs of one
    launch) whose rows hold ``channels`` values, vectors of at most
    ``most_bytes``. H is merged into W, and the images into the locations,
    where every tensor's strides allow it (the rule of csrc/layout.h); the
    pattern and VEC must suit every tensor."""
    x0 = xs[0]
    C = x0.shape[1]
    if x0.dim() == 2:
        B, H, W = 1, 1, x0.shape[0]
        st = [[0, 0, x.stride(0), x.stride(1)] for x in xs]
    else:
        B, _, H, W = x0.shape
        st = [[x.stride(0), x.stride(2), x.stride(3), x.stride(1)] for x in xs]
        if all(H == 1 or W == 1 or s[1] == W * s[2] for s in st):
            for s in st:
                s[1], s[2] = 0, (s[1] if W == 1 else s[2])
            H, W = 1, H * W
    if H == 1 and all(B == 1 or s[0] == W * s[2] for s in st):
        B, W = 1, B * W
    for s in st:  # strides of size-1 dimensions are never stepped over
        s[0] = 0 if B == 1 else s[0]
        s[2] = 0 if W == 1 else s[2]
        s[3] = 0 if C == 1 else s[3]
    most = most_bytes // x0.element_size()
    if H == 1 and W > 1 and all(s[2] == 1 for s in st):
        access = LOCATIONS
        vec = pow2_dividing([W] + [s[0] for s in st] + [s[3] for s in st], most)
        div = [vec, 0, 0, vec]
    elif H == 1 and all(s[3] in (0, 1) for s in st):
        access = CHANNELS
        vec = pow2_dividing([channels] + [s[0] for s in st] + [s[2] for s in st], most)
        div = [vec, 0, vec, 0]
    else:
        access, vec, div = STRIDED, 1, [0, 0, 0, 0]
    strides = [tuple(v // d if d else v for v, d in zip(s, div)) for s in st]
    hw = H * W // vec if access == LOCATIONS else H * W
    n_ch = channels // vec if access == CHANNELS else channels
    return Plan(B, H * W, int(access), vec, hw, W, n_ch, strides)


def bucket(n):
    """Autotuning key of a location count: its power of two, so that a new
    feature-map size reuses the configuration tuned for its bucket."""
    return triton.next_power_of_2(n)


def grid(images, per_image):
    return lambda meta: (images * triton.cdiv(per_image, meta["BLOCK_L"]),)


# ------------------------------------------------------------- autograd ----


def register_autograd(name, op, backward_op, rule):
    """Registers ``rule`` ((backward, setup_context), the rule the extension's
    operators have in csrc/autograd.cpp) as the autograd of ``op``, and on its
    ``backward_op`` a rule that refuses a second derivative instead of returning
    a wrong one."""
    op.register_autograd(rule[0], setup_context=rule[1])

    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"bckd: double backward of {name} is not supported (its backward has no derivative)")

    backward_op.register_autograd(backward, setup_context=setup)
