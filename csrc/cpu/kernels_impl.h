// CPU kernel bodies. Included once per instruction set (kernels_default.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp), with CPU_CAPABILITY naming the
// namespace (DEFAULT, AVX2, AVX512) so that the copies never collide.
//
// One SIMD lane per location: a task takes Vec::size() neighbouring locations
// of one row of the layout and walks their channels, so sums and maxima over
// classes or bins are plain lane-wise operations (no horizontal reductions) and
// each location's result depends on its own inputs only, in a fixed order:
// bitwise deterministic whatever the number of threads. Unit-stride rows (head
// maps [B, C, H, W]) load directly. When instead each location's channels are
// contiguous (channels_last maps, rows), BCDL's AVX2 and AVX-512 builds
// hold 8 or 16 classes of one location per vector (bcdl_forward_rows), and the
// other paths read kTile channels of the run's locations as short contiguous
// rows and transpose them in registers (load_tile); other strides gather into
// the lanes.
// One pass over the inputs per direction; the backward recomputes the forward
// pieces instead of saving anything of size [N, C].
//
//   simd.h          the instruction set's vector maths: fast maths, VecMath
//   channels.h      loads and stores of a run's channels through a layout
//   bcdl_kernels.h  BCDL forward and backward
//   giou_kernels.h  paired GIoU forward and backward
//   dfl_kernels.h   fused DFL decode + GIoU forward and backward
#pragma once

#include "bcdl_kernels.h"
#include "giou_kernels.h"
#include "dfl_kernels.h"
