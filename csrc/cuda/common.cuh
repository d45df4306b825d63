// Device helpers shared by the CUDA kernels: element types, warp reductions, and the selection rule every
// fastfer backend follows (k highest scores, ties to the lower position, NaN lowest, ascending output).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "op_args.h"

namespace fastfer {
namespace cuda {

constexpr int kWarp = 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls fn(T{}) with T the CUDA element type of dtype (host side, picks the kernel instantiation).
template <typename Fn>
inline void dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      fn(float{});
      break;
    case DType::kFloat16:
      fn(__half{});
      break;
    case DType::kBFloat16:
      fn(__nv_bfloat16{});
      break;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Max that ignores NaN (NaN reaches the result through exp(NaN − m) instead, as on the other backends).
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Score a at position i ranks before score b at position j: higher first, NaN below every number, ties to
// the lower position. A strict total order, so every position gets a distinct rank.
__device__ __forceinline__ bool ranks_before(float a, int64_t i, float b, int64_t j) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a != b) return a > b;
  return i < j;
}

// Called by every thread of the block (blockDim.x a multiple of 32, at most 1024). Writes offset + p for
// the k best positions p of scores[0..n) to out[0..k), ascending. A position is kept when fewer than k
// positions rank before it (rank by comparison, O(n²/threads): cheap for n in the hundreds); its output
// slot is the number of kept positions before it, counted with warp ballots and a running carry. The
// scores must be visible to the whole block (written before a __syncthreads()).
__device__ inline void select_topk_ascending(const float* scores, int64_t n, int64_t k, int64_t offset,
                                             int64_t* out) {
  __shared__ int warp_counts[32];
  __shared__ int64_t carry;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    bool keep = false;
    if (i < n) {
      if (k >= n) {
        keep = true;
      } else {
        const float s = scores[i];
        int64_t rank = 0;
        for (int64_t j = 0; j < n; ++j) rank += ranks_before(scores[j], j, s, i);
        keep = rank < k;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int64_t slot = carry + __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) slot += warp_counts[w];
    if (keep) out[slot] = offset + i;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < warps; ++w) carry += warp_counts[w];
    }
    __syncthreads();
  }
}

inline const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace fastfer
