// Host-only check of the CUDA kernels' access rule (csrc/cuda/access.h):
// which access, vector width and lanes per location each layout gets, with
// the alignment fallbacks. Built and run by benchmarks/cuda_static.py; needs
// no GPU and no CUDA toolkit (only torch's headers, for layout.h).
#include <cstdio>
#include <string>

#include "../csrc/cuda/access.h"

using bckd::LocLayout;
using bckd::cuda::Access;
using bckd::cuda::AccessPlan;
using bckd::cuda::Operand;
using bckd::cuda::boxes_packed;
using bckd::cuda::lanes_for;
using bckd::cuda::plan_access;

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

// A 256-byte-aligned address, like the caching allocator's, plus `offset` bytes.
const void* addr(int64_t offset) { return reinterpret_cast<const void*>(uintptr_t{1} << 20 | offset); }

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

}  // namespace

int main() {
  const LocLayout a = nchw(16, 80, 22400), b = channels_last(16, 80, 22400);
  expect_access("nchw float32: 4 locations per 16-byte load",
                plan_access({{addr(0), &a}, {addr(0), &a}}, 4, {16}), Access::kLocations, 4, 1);
  expect_access("nchw bfloat16: 8 locations per load",
                plan_access({{addr(0), &a}, {addr(0), &a}}, 2, {16}), Access::kLocations, 8, 1);
  expect_access("nchw float64 (no vector widths): scalar",
                plan_access({{addr(0), &a}, {addr(0), &a}}, 8, {}), Access::kLocations, 1, 1);
  expect_access("nchw, base 4 bytes off: scalar loads",
                plan_access({{addr(0), &a}, {addr(4), &a}}, 4, {16}), Access::kLocations, 1, 1);
  const LocLayout odd = nchw(2, 80, 22401);
  expect_access("nchw, H·W not a multiple of 4: scalar loads",
                plan_access({{addr(0), &odd}, {addr(0), &odd}}, 4, {16}), Access::kLocations, 1, 1);
  expect_access("channels_last float32, C = 80: 4 lanes × 5 float4",
                plan_access({{addr(0), &b}, {addr(0), &b}}, 4, {16}), Access::kChannels, 4, 4);
  expect_access("channels_last bfloat16, C = 80: 2 lanes × 5 vectors of 8",
                plan_access({{addr(0), &b}, {addr(0), &b}}, 2, {16}), Access::kChannels, 8, 2);
  expect_access("channels_last + grad, base 8 bytes off: scalar, 16 lanes",
                plan_access({{addr(0), &b}, {addr(0), &b}, {addr(8), &b}}, 4, {16}), Access::kChannels, 1, 16);
  const LocLayout c81 = rows(1000, 81, 81, 1);
  expect_access("[N, 81] float32: scalar loads, 32 lanes × 3",
                plan_access({{addr(0), &c81}, {addr(0), &c81}}, 4, {16}), Access::kChannels, 1, 32);
  const LocLayout c1 = rows(1000, 1, 1, 1);
  expect_access("[N, 1]: one location per lane, 4 per load",
                plan_access({{addr(0), &c1}, {addr(0), &c1}}, 4, {16}), Access::kLocations, 4, 1);
  const LocLayout col = rows(1000, 13, 1, 1000);
  expect_access("[N, C] rows_transposed: kLocations",
                plan_access({{addr(0), &col}, {addr(0), &col}}, 4, {16}), Access::kLocations, 4, 1);
  const LocLayout strided = rows(37, 13, 27, 2);
  expect_access("[N, C] with both strides > 1: kLocations, scalar",
                plan_access({{addr(0), &strided}, {addr(0), &strided}}, 4, {16}), Access::kLocations, 1, 1);
  expect_access("student nchw, teacher channels_last: kLocations, scalar",
                plan_access({{addr(0), &a}, {addr(0), &b}}, 4, {16}), Access::kLocations, 1, 1);
  LocLayout hw1 = nchw(16, 80, 1);
  hw1.sc = 1;  // [B, C, 1, 1] contiguous: the channels are the contiguous dimension
  expect_access("[B, C, 1, 1]: kChannels",
                plan_access({{addr(0), &hw1}, {addr(0), &hw1}}, 4, {16}), Access::kChannels, 4, 4);
  const LocLayout big = rows(2, 80, int64_t{1} << 31, 1);
  expect_access("bfloat16 rows 2^31 elements apart: kChannels, 16-byte loads",
                plan_access({{addr(0), &big}, {addr(0), &big}}, 2, {16}), Access::kChannels, 8, 2);
  const LocLayout reg = channels_last(16, 68, 22400);
  expect_access("DFL channels_last float32, 68 channels: 16-byte loads",
                plan_access({{addr(0), &reg}, {addr(0), &reg}}, 4, {16, 8}), Access::kChannels, 4, 4);
  expect_access("DFL channels_last bfloat16, 68 channels: 8-byte loads",
                plan_access({{addr(0), &reg}, {addr(0), &reg}}, 2, {16, 8}), Access::kChannels, 4, 4);
  const LocLayout regn = nchw(16, 68, 22400);
  expect_access("DFL nchw: kLocations",
                plan_access({{addr(0), &regn}, {addr(0), &regn}}, 4, {16, 8}), Access::kLocations, 4, 1);

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

  std::printf("access rule: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
