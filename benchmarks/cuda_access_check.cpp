// Host-only check of the CUDA kernels' access rule (csrc/cuda/access.h):
// which access, vector width and lanes per location each layout gets, with
// the alignment fallbacks; and of every further decision the launchers take
// (csrc/cuda/launch.h): the alignment of the per-location vectors, the DFL
// tile's 48 KB of shared memory, unmerged H, the 8-byte DFL vectors and the
// GIoU gradients that are not wanted. Built and run by
// benchmarks/cuda_static.py and tests/test_cuda_static.py; needs no GPU and
// no CUDA toolkit (only torch's headers, for layout.h).
#include <cstdio>
#include <string>

#include "../csrc/cuda/access.h"
#include "../csrc/cuda/launch.h"

using namespace bckd;        // the kernel arguments and LocLayout
using namespace bckd::cuda;  // the access rule and the launchers' decisions

namespace {

int passed = 0, failed = 0;

void expect(const char* what, bool ok) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

void expect_access(const char* what, const AccessPlan& got, Access access, int vec, int group) {
  const bool ok = got.access == access && got.vec == vec && got.group == group;
  if (!ok) {
    std::printf("  %s: got access %s vec %d group %d\n", what,
                got.access == Access::kChannels ? "kChannels" : "kLocations", got.vec, got.group);
  }
  expect(what, ok);
}

const char* kernel_name(DflKernel k) {
  return k == DflKernel::kChannels ? "kChannels" : k == DflKernel::kFixedBins ? "kFixedBins" : "kAnyBins";
}

void expect_dfl(const char* what, const DflPlan& got, DflKernel kernel, int vec) {
  const bool ok = got.kernel == kernel && got.vec == vec;
  if (!ok) std::printf("  %s: got %s vec %d\n", what, kernel_name(got.kernel), got.vec);
  expect(what, ok);
}

// A 256-byte-aligned address, like the caching allocator's, plus `offset` bytes.
void* addr(int64_t offset) { return reinterpret_cast<void*>(uintptr_t{1} << 20 | offset); }

// The access plan of a student and a teacher of layout l, both at aligned addresses.
AccessPlan plan_pair(const LocLayout& l, int64_t elem, std::initializer_list<int64_t> vec_bytes) {
  return plan_access({{addr(0), &l}, {addr(0), &l}}, elem, vec_bytes);
}

// [B, C, H, W] contiguous, H and W merged (layout.h's make_layouts).
LocLayout nchw(int64_t B, int64_t C, int64_t HW) {
  LocLayout l;
  l.B = B, l.C = C, l.W = HW, l.sb = C * HW, l.sc = HW, l.sw = 1;
  return l;
}

// [B, C, H, W] channels_last, H and W merged.
LocLayout channels_last(int64_t B, int64_t C, int64_t HW) {
  LocLayout l;
  l.B = B, l.C = C, l.W = HW, l.sb = C * HW, l.sc = 1, l.sw = C;
  return l;
}

// [N, C] with strides (sn, sc).
LocLayout rows(int64_t N, int64_t C, int64_t sn, int64_t sc) {
  LocLayout l;
  l.W = N, l.C = C, l.sw = sn, l.sc = sc;
  return l;
}

// x[:, :, :, :W] of a contiguous [B, C, H, width] map: H and W stay apart
// (layout.h merges them only when w's stride steps over h).
LocLayout nchw_unmerged(int64_t B, int64_t C, int64_t H, int64_t W, int64_t width) {
  LocLayout l;
  l.B = B, l.C = C, l.H = H, l.W = W;
  l.sb = C * H * width, l.sc = H * width, l.sh = width, l.sw = 1;
  return l;
}

// The same slice of a channels_last map.
LocLayout channels_last_unmerged(int64_t B, int64_t C, int64_t H, int64_t W, int64_t width) {
  LocLayout l;
  l.B = B, l.C = C, l.H = H, l.W = W;
  l.sb = C * H * width, l.sc = 1, l.sh = width * C, l.sw = C;
  return l;
}

// Every pointer 16-byte aligned; a test moves the one it is about.
BcdlFwdArgs bcdl_fwd(const LocLayout& l) {
  BcdlFwdArgs a{};
  a.student = a.teacher = a.weight = addr(0);
  a.loss = a.max_abs_diff = addr(0);
  a.ls = a.lt = l;
  return a;
}

BcdlBwdArgs bcdl_bwd(const LocLayout& l) {
  BcdlBwdArgs a{};
  a.student = a.teacher = a.grad_loss = a.weight = addr(0);
  a.grad = addr(0);
  a.ls = a.lt = a.lg = l;
  return a;
}

DflFwdArgs dfl_fwd(const LocLayout& l, int reg_max) {
  DflFwdArgs a{};
  a.student = a.teacher = addr(0);
  a.loss = addr(0);
  a.ls = a.lt = l;
  a.nbins = reg_max + 1;
  return a;
}

DflBwdArgs dfl_bwd(const LocLayout& l, int reg_max) {
  DflBwdArgs a{};
  a.student = a.teacher = a.grad_loss = addr(0);
  a.grad = addr(0);
  a.ls = a.lt = a.lg = l;
  a.nbins = reg_max + 1;
  return a;
}

GiouBwdArgs giou_bwd(const LocLayout& l) {
  GiouBwdArgs a{};
  a.pred = a.target = a.grad_loss = addr(0);
  a.grad_pred = a.grad_target = addr(0);
  a.lp = a.lt = a.lgp = a.lgt = l;
  return a;
}

// The launchers' decisions (launch.h), per op.
void check_bcdl() {
  const LocLayout m = nchw(16, 80, 22400), cl = channels_last(16, 80, 22400);
  BcdlFwdArgs f = bcdl_fwd(m);
  expect_access("BCDL forward nchw float32, all aligned: 4 locations per load", plan_bcdl(f, 4),
                Access::kLocations, 4, 1);
  f.weight = nullptr;
  expect_access("BCDL forward, no weight: 4 locations per load", plan_bcdl(f, 4), Access::kLocations, 4, 1);
  f = bcdl_fwd(m), f.loss = addr(4);
  expect_access("BCDL forward, loss 4 bytes off: scalar", plan_bcdl(f, 4), Access::kLocations, 1, 1);
  f = bcdl_fwd(m), f.max_abs_diff = addr(4);
  expect_access("BCDL forward, max_abs_diff 4 bytes off: scalar", plan_bcdl(f, 4), Access::kLocations, 1, 1);
  f = bcdl_fwd(m), f.weight = addr(4);
  expect_access("BCDL forward, weight 4 bytes off: scalar", plan_bcdl(f, 4), Access::kLocations, 1, 1);
  f = bcdl_fwd(m);
  expect_access("BCDL forward nchw float64: scalar", plan_bcdl(f, 8), Access::kLocations, 1, 1);
  f = bcdl_fwd(cl), f.weight = f.loss = f.max_abs_diff = addr(4);
  expect_access("BCDL forward channels_last, per-location vectors 4 bytes off: still 16-byte rows",
                plan_bcdl(f, 4), Access::kChannels, 4, 4);

  BcdlBwdArgs b = bcdl_bwd(m);
  expect_access("BCDL backward nchw bfloat16, all aligned: 8 locations per load", plan_bcdl(b, 2),
                Access::kLocations, 8, 1);
  b.grad_loss = addr(4);
  expect_access("BCDL backward, grad_loss 4 bytes off: scalar", plan_bcdl(b, 2), Access::kLocations, 1, 1);
  b = bcdl_bwd(m), b.weight = addr(4);
  expect_access("BCDL backward, weight 4 bytes off: scalar", plan_bcdl(b, 2), Access::kLocations, 1, 1);
  b.weight = nullptr;
  expect_access("BCDL backward, no weight: 8 locations per load", plan_bcdl(b, 2), Access::kLocations, 8, 1);
  b = bcdl_bwd(m), b.grad = addr(8);
  expect_access("BCDL backward, gradient 8 bytes off: scalar", plan_bcdl(b, 2), Access::kLocations, 1, 1);
  b = bcdl_bwd(cl), b.grad_loss = b.weight = addr(4);
  expect_access("BCDL backward channels_last float32, per-location vectors off: 16-byte rows", plan_bcdl(b, 4),
                Access::kChannels, 4, 4);

  // H not merged into W: the row stride sh must keep the 16-byte alignment too.
  struct Unmerged {
    const char* what;
    int64_t W, width, elem;
    int vec;
  };
  for (const Unmerged& u : {
           Unmerged{"unmerged H float32, rows of 12 (48 bytes): 4 locations per load", 8, 12, 4, 4},
           Unmerged{"unmerged H float32, rows of 10 (40 bytes): scalar", 8, 10, 4, 1},
           Unmerged{"unmerged H bfloat16, rows of 12 (24 bytes): scalar", 8, 12, 2, 1},
           Unmerged{"unmerged H bfloat16, rows of 16 (32 bytes): 8 locations per load", 8, 16, 2, 8},
           Unmerged{"unmerged H float32, W = 6: scalar (a vector would cross a row)", 6, 12, 4, 1},
       }) {
    expect_access(u.what, plan_bcdl(bcdl_fwd(nchw_unmerged(2, 80, 20, u.W, u.width)), u.elem), Access::kLocations,
                  u.vec, 1);
  }
  expect_access("unmerged H channels_last float32, C = 80: 16-byte rows",
                plan_bcdl(bcdl_bwd(channels_last_unmerged(2, 80, 20, 8, 10)), 4), Access::kChannels, 4, 4);
}

void check_dfl() {
  // 8 warps × 8 locations × 2 rows × C values: 68 channels in float32 take 34 KB.
  expect("dfl_chan_smem(68, float32) = 34 KB", dfl_chan_smem(68, 4) == 34816);
  const LocLayout cl = channels_last(16, 68, 22400), m = nchw(16, 68, 22400);
  expect_dfl("DFL channels_last float32, reg_max 16: 16-byte rows", plan_dfl(dfl_fwd(cl, 16), 4, 4),
             DflKernel::kChannels, 4);
  DflFwdArgs f = dfl_fwd(cl, 16);
  f.student = addr(8);
  expect_dfl("DFL channels_last float32, student 8 bytes off: 8-byte vectors", plan_dfl(f, 4, 4),
             DflKernel::kChannels, 2);
  f.student = addr(4);
  expect_dfl("DFL channels_last float32, student 4 bytes off: scalar", plan_dfl(f, 4, 4), DflKernel::kChannels, 1);
  DflBwdArgs b = dfl_bwd(cl, 16);
  b.grad = addr(8);
  expect_dfl("DFL backward float32, gradient 8 bytes off: 8-byte vectors", plan_dfl(b, 4, 4),
             DflKernel::kChannels, 2);
  expect_dfl("DFL channels_last half, 68 channels (136-byte rows): 8-byte vectors",
             plan_dfl(dfl_bwd(cl, 16), 2, 4), DflKernel::kChannels, 4);
  // The tile against the default 48 KB of shared memory.
  expect_dfl("DFL float32 reg_max 15 (32 KB tile): kChannels",
             plan_dfl(dfl_fwd(channels_last(16, 64, 22400), 15), 4, 4), DflKernel::kChannels, 4);
  expect_dfl("DFL float32 reg_max 23 (48 KB tile, the limit): kChannels",
             plan_dfl(dfl_fwd(channels_last(16, 96, 22400), 23), 4, 4), DflKernel::kChannels, 4);
  expect_dfl("DFL float32 reg_max 24 (50 KB tile): one thread per location",
             plan_dfl(dfl_bwd(channels_last(16, 100, 22400), 24), 4, 4), DflKernel::kAnyBins, 1);
  expect_dfl("DFL float64 reg_max 16 (68 KB tile): 17 bins in registers", plan_dfl(dfl_fwd(cl, 16), 8, 8),
             DflKernel::kFixedBins, 1);
  expect_dfl("DFL float64 reg_max 11 (48 KB tile): kChannels, scalar",
             plan_dfl(dfl_fwd(channels_last(16, 48, 22400), 11), 8, 8), DflKernel::kChannels, 1);
  expect_dfl("DFL float64 reg_max 12 (52 KB tile): one thread per location",
             plan_dfl(dfl_fwd(channels_last(16, 52, 22400), 12), 8, 8), DflKernel::kAnyBins, 1);
  expect_dfl("DFL nchw reg_max 16: 17 bins in registers", plan_dfl(dfl_fwd(m, 16), 4, 4), DflKernel::kFixedBins, 1);
  expect_dfl("DFL nchw reg_max 15: bins read per use", plan_dfl(dfl_bwd(nchw(16, 64, 22400), 15), 4, 4),
             DflKernel::kAnyBins, 1);
}

void check_giou() {
  const LocLayout box = rows(1000, 4, 4, 1), box_t = rows(1000, 4, 1, 1000);
  GiouFwdArgs f{};
  f.pred = f.target = addr(0);
  f.lp = f.lt = box;
  expect("GIoU forward float32 aligned: packed", giou_packed(f, 4));
  f.target = addr(4);
  expect("GIoU forward float32, target 4 bytes off: scalar", !giou_packed(f, 4));
  GiouBwdArgs b = giou_bwd(box);
  expect("GIoU backward float32 aligned: packed", giou_packed(b, 4));
  b.grad_pred = addr(4);
  expect("GIoU backward, grad_pred 4 bytes off: scalar", !giou_packed(b, 4));
  b.grad_pred = nullptr;
  expect("GIoU backward, grad_pred not wanted: packed", giou_packed(b, 4));
  b = giou_bwd(box), b.grad_target = nullptr, b.lgt = box_t;
  expect("GIoU backward, a rows_transposed grad_target not wanted: packed", giou_packed(b, 4));
  b.grad_target = addr(0);
  expect("GIoU backward, a rows_transposed grad_target wanted: scalar", !giou_packed(b, 4));
}

}  // namespace

int main() {
  const LocLayout a = nchw(16, 80, 22400), b = channels_last(16, 80, 22400);
  expect_access("nchw float32: 4 locations per 16-byte load", plan_pair(a, 4, {16}), Access::kLocations, 4, 1);
  expect_access("nchw bfloat16: 8 locations per load", plan_pair(a, 2, {16}), Access::kLocations, 8, 1);
  expect_access("nchw float64 (no vector widths): scalar", plan_pair(a, 8, {}), Access::kLocations, 1, 1);
  expect_access("nchw, base 4 bytes off: scalar loads",
                plan_access({{addr(0), &a}, {addr(4), &a}}, 4, {16}), Access::kLocations, 1, 1);
  expect_access("nchw, H·W not a multiple of 4: scalar loads",
                plan_pair(nchw(2, 80, 22401), 4, {16}), Access::kLocations, 1, 1);
  expect_access("channels_last float32, C = 80: 4 lanes × 5 float4", plan_pair(b, 4, {16}), Access::kChannels, 4, 4);
  expect_access("channels_last bfloat16, C = 80: 2 lanes × 5 vectors of 8",
                plan_pair(b, 2, {16}), Access::kChannels, 8, 2);
  expect_access("channels_last + grad, base 8 bytes off: scalar, 16 lanes",
                plan_access({{addr(0), &b}, {addr(0), &b}, {addr(8), &b}}, 4, {16}), Access::kChannels, 1, 16);
  expect_access("[N, 81] float32: scalar loads, 32 lanes × 3",
                plan_pair(rows(1000, 81, 81, 1), 4, {16}), Access::kChannels, 1, 32);
  expect_access("[N, 1]: one location per lane, 4 per load",
                plan_pair(rows(1000, 1, 1, 1), 4, {16}), Access::kLocations, 4, 1);
  expect_access("[N, C] rows_transposed: kLocations",
                plan_pair(rows(1000, 13, 1, 1000), 4, {16}), Access::kLocations, 4, 1);
  expect_access("[N, C] with both strides > 1: kLocations, scalar",
                plan_pair(rows(37, 13, 27, 2), 4, {16}), Access::kLocations, 1, 1);
  expect_access("student nchw, teacher channels_last: kLocations, scalar",
                plan_access({{addr(0), &a}, {addr(0), &b}}, 4, {16}), Access::kLocations, 1, 1);
  LocLayout hw1 = nchw(16, 80, 1);
  hw1.sc = 1;  // [B, C, 1, 1] contiguous: the channels are the contiguous dimension
  expect_access("[B, C, 1, 1]: kChannels", plan_pair(hw1, 4, {16}), Access::kChannels, 4, 4);
  expect_access("bfloat16 rows 2^31 elements apart: kChannels, 16-byte loads",
                plan_pair(rows(2, 80, int64_t{1} << 31, 1), 2, {16}), Access::kChannels, 8, 2);
  const LocLayout reg = channels_last(16, 68, 22400);
  expect_access("DFL channels_last float32, 68 channels: 16-byte loads",
                plan_pair(reg, 4, {16, 8}), Access::kChannels, 4, 4);
  expect_access("DFL channels_last bfloat16, 68 channels: 8-byte loads",
                plan_pair(reg, 2, {16, 8}), Access::kChannels, 4, 4);
  expect_access("DFL nchw: kLocations", plan_pair(nchw(16, 68, 22400), 4, {16, 8}), Access::kLocations, 4, 1);

  expect("lanes_for(20) = 4", lanes_for(20) == 4);
  expect("lanes_for(10) = 2", lanes_for(10) == 2);
  expect("lanes_for(5) = 1", lanes_for(5) == 1);
  expect("lanes_for(17) = 4", lanes_for(17) == 4);
  expect("lanes_for(1000) = 32", lanes_for(1000) == 32);

  const LocLayout box = rows(1000, 4, 4, 1), box_t = rows(1000, 4, 1, 1000), box_s = rows(1000, 4, 5, 1);
  expect("[N, 4] float32 contiguous: one load per box", boxes_packed({{addr(0), &box}, {addr(0), &box}}, 4));
  expect("[N, 4] float32, base 4 bytes off: scalar", !boxes_packed({{addr(0), &box}, {addr(4), &box}}, 4));
  expect("[N, 4] bfloat16, base 8 bytes off: packed (8-byte loads)", boxes_packed({{addr(8), &box}}, 2));
  expect("[N, 4] rows_transposed: scalar", !boxes_packed({{addr(0), &box_t}}, 4));
  expect("[N, 4] rows 5 apart: scalar", !boxes_packed({{addr(0), &box_s}}, 4));

  check_bcdl();
  check_dfl();
  check_giou();

  std::printf("access rule and launch decisions: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
