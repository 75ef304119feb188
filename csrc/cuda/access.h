// How the CUDA kernels walk memory, chosen per call from the strides. Host
// code only (no CUDA headers), so that the rule can be compiled and checked
// on a machine without a GPU (benchmarks/cuda_static.py does).
//
// Two accesses:
// - kLocations: locations are contiguous (sw = 1: nchw maps,
//   rows_transposed). One thread per location walks the channels; neighbouring
//   threads read neighbouring locations of one channel plane, so each load of
//   a warp is coalesced. With vec > 1 a thread takes vec neighbouring
//   locations and reads them with one 16-byte load per channel.
// - kChannels: a location's channels are contiguous (sc = 1: rows,
//   channels_last maps). `group` lanes of one warp share a location; lane r
//   reads vectors r, r + group, ... of its row (vec channels each, 16 bytes),
//   so a group's loads cover one contiguous span per instruction. Sums and
//   maxima over channels end in a shuffle butterfly inside the group.
// A vector load needs every address it forms to be a multiple of 16 bytes:
// the base pointer and each stride it steps by (only dimensions of size > 1
// step), and a run length (W for kLocations, C for kChannels) that is a
// multiple of vec. Where 16 bytes do not fit, a kernel may try 8 (half-precision
// regression rows of 68 channels: 136 bytes); anything else keeps the
// access and loads one element at a time.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "../layout.h"

namespace bckd {
namespace cuda {

// Threads per block of every kernel.
constexpr int kThreads = 256;
constexpr int64_t kVecBytes = 16;
constexpr int kWarpSize = 32;
// Vectors one lane of a kChannels group holds at a time. Five makes COCO's
// 80 float32 classes (20 vectors) exactly 4 lanes × 5, and the 68 regression
// channels (17 vectors) 4 lanes × at most 5.
constexpr int kVecsPerLane = 5;

enum class Access { kLocations, kChannels };

// The access of one call and its vector width.
struct AccessPlan {
  Access access;
  int vec;    // elements per load (locations for kLocations, channels for kChannels)
  int group;  // lanes per location: 1 for kLocations, a power of two ≤ 32 for kChannels
};

// One tensor the kernel reads or writes through a layout.
struct Operand {
  const void* ptr;
  const LocLayout* layout;
};

inline bool multiple_of(int64_t x, int64_t m) { return x % m == 0; }

// A stride keeps `bytes` alignment if it is a multiple of it or never used
// (its dimension has one index).
inline bool stride_ok(int64_t size, int64_t stride, int64_t elem, int64_t bytes) {
  return size <= 1 || multiple_of(stride * elem, bytes);
}

inline bool base_ok(const void* p, int64_t bytes = kVecBytes) {
  return multiple_of(static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)), bytes);
}

// Smallest power-of-two group whose lanes each hold at most kVecsPerLane of
// the nvec vectors; 32 (a whole warp, looping over the row) beyond that.
inline int lanes_for(int64_t nvec) {
  int g = 1;
  while (g < kWarpSize && (nvec + g - 1) / g > kVecsPerLane) g *= 2;
  return g;
}

// elem: bytes per element; vec_bytes: the vector widths to try, widest
// first (empty: scalar loads only, as for float64, whose vector kernels would
// only add build time for a gradcheck dtype).
inline AccessPlan plan_access(std::initializer_list<Operand> ops, int64_t elem,
                              std::initializer_list<int64_t> vec_bytes) {
  bool loc = true, chan = true;
  for (const Operand& o : ops) {
    const LocLayout& l = *o.layout;
    loc = loc && l.sw == 1 && l.W > 1;
    chan = chan && l.sc == 1 && l.C > 1;
  }
  const Access access = chan && !loc ? Access::kChannels : Access::kLocations;
  int64_t vec = 1;
  for (const int64_t bytes : vec_bytes) {
    const int64_t n = bytes / elem;
    bool ok = (loc || chan) && n > 1;
    for (const Operand& o : ops) {
      const LocLayout& l = *o.layout;
      ok = ok && multiple_of(static_cast<int64_t>(reinterpret_cast<uintptr_t>(o.ptr)), bytes) &&
           stride_ok(l.H, l.sh, elem, bytes) && stride_ok(l.B, l.sb, elem, bytes) &&
           (access == Access::kChannels
                ? multiple_of(l.C, n) && stride_ok(l.W, l.sw, elem, bytes)
                : multiple_of(l.W, n) && stride_ok(l.C, l.sc, elem, bytes));
    }
    if (ok) {
      vec = n;
      break;
    }
  }
  const int group = access == Access::kChannels ? lanes_for(ops.begin()->layout->C / vec) : 1;
  return {access, static_cast<int>(vec), group};
}

// Paired boxes [N, 4]: one 4-element load per box (16 bytes in float32, 8 in
// half precision) when each box's coordinates are contiguous and aligned.
inline bool boxes_packed(std::initializer_list<Operand> ops, int64_t elem) {
  bool ok = true;
  for (const Operand& o : ops) {
    const LocLayout& l = *o.layout;
    ok = ok && l.sc == 1 && base_ok(o.ptr, 4 * elem) &&
         (l.W <= 1 || multiple_of(l.sw, 4)) && l.H == 1 && l.B == 1;
  }
  return ok;
}

}  // namespace cuda
}  // namespace bckd
