// Indexing shared by the CUDA kernels: one thread per location, 64-bit
// offsets, grid-stride loops.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../bckd_math.h"
#include "../layout.h"

namespace bckd {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 30));
}

// Location i (output index) -> (b, h, w) of a layout; every layout of one
// call shares B, H, W.
struct LocIndex {
  int64_t b, h, w;
  __device__ __forceinline__ LocIndex(const LocLayout& l, int64_t i) {
    w = i % l.W;
    const int64_t row = i / l.W;
    h = row % l.H;
    b = row / l.H;
  }
  __device__ __forceinline__ int64_t offset(const LocLayout& l) const {
    return b * l.sb + h * l.sh + w * l.sw;
  }
};

#define BCKD_GRID_LOOP(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace cuda
}  // namespace bckd
