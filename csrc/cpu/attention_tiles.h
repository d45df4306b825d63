// Register-tiled fp32 building blocks of the CPU attention kernels.
//
// They are written as plain loops with compile-time tile sizes so that the compiler keeps the accumulator
// tile in vector registers; they are force-inlined into the FASTFER_CPU_CLONES callers, which compiles
// them once per instruction set (a non-inlined copy would only get the baseline x86-64 instructions).
// Every operand is a fp32 scratch buffer prepared by the caller (converted, scaled, zero-padded), so the
// loops need no tail handling: column counts are multiples of kCols and row counts multiples of the tile.
#pragma once

#include "common.h"

#if defined(__GNUC__)
#define FASTFER_INLINE inline __attribute__((always_inline))
#else
#define FASTFER_INLINE inline
#endif

namespace fastfer {
namespace cpu {

// Columns per tile: one AVX-512 register holds 16 floats; two per row balance loads against FMAs.
constexpr int64_t kCols = 32;

// s[r][0..kCols) = Σ_d a[r][d] · bt[d][0..kCols)  for r < R   (S = Q Kᵀ with K stored transposed)
template <int R>
FASTFER_INLINE void tile_a_bt(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t depth, float* s,
                              int64_t lds) {
  float acc[R][kCols] = {};
  for (int64_t d = 0; d < depth; ++d) {
    const float* brow = bt + d * ldb;
    for (int r = 0; r < R; ++r) {
      const float av = a[r * lda + d];
      for (int64_t w = 0; w < kCols; ++w) acc[r][w] += av * brow[w];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t w = 0; w < kCols; ++w) s[r * lds + w] = acc[r][w];
}

// o[r][0..width) += Σ_j p[r][j] · v[j][0..width)  for r < R, j < keys   (O += P V, dQ += dS K)
template <int R>
FASTFER_INLINE void tile_p_v(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t keys, int64_t width,
                             float* o, int64_t ldo) {
  for (int64_t d0 = 0; d0 < width; d0 += kCols) {
    float acc[R][kCols];
    for (int r = 0; r < R; ++r)
      for (int64_t w = 0; w < kCols; ++w) acc[r][w] = o[r * ldo + d0 + w];
    for (int64_t j = 0; j < keys; ++j) {
      const float* vrow = v + j * ldv + d0;
      for (int r = 0; r < R; ++r) {
        const float pr = p[r * ldp + j];
        for (int64_t w = 0; w < kCols; ++w) acc[r][w] += pr * vrow[w];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int64_t w = 0; w < kCols; ++w) o[r * ldo + d0 + w] = acc[r][w];
  }
}

// acc[j][0..width) += Σ_r p[r][j] · x[r][0..width)  for j < keys, r < rows   (dV += Pᵀ dO, dK += dSᵀ Q)
// An 8-key × kCols accumulator tile stays in registers while all rows stream past it, so acc is read and
// written once per call; keys must be a multiple of 8.
FASTFER_INLINE void tile_pt_x(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, int64_t keys,
                              int64_t width, float* acc, int64_t ld_acc) {
  constexpr int kKeys = 8;
  for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
    for (int64_t d0 = 0; d0 < width; d0 += kCols) {
      float t[kKeys][kCols];
      for (int jj = 0; jj < kKeys; ++jj)
        for (int64_t w = 0; w < kCols; ++w) t[jj][w] = acc[(j0 + jj) * ld_acc + d0 + w];
      for (int64_t r = 0; r < rows; ++r) {
        const float* xrow = x + r * ldx + d0;
        const float* prow = p + r * ldp + j0;
        for (int jj = 0; jj < kKeys; ++jj) {
          const float pr = prow[jj];
          for (int64_t w = 0; w < kCols; ++w) t[jj][w] += pr * xrow[w];
        }
      }
      for (int jj = 0; jj < kKeys; ++jj)
        for (int64_t w = 0; w < kCols; ++w) acc[(j0 + jj) * ld_acc + d0 + w] = t[jj][w];
    }
  }
}

}  // namespace cpu
}  // namespace fastfer
