// Attentive Patch Pooling on CUDA (docs/design.md §2.1). Forward: one block per image, one launch — channel scores
// (written to the scores output), top-k selection, gather of the kept positions (+ pos) into tokens. The
// map is read through (batch, position, channel) strides, so NCHW, channels_last and tokens need no copy.
// Backward: each element of grad_x is written once (the token gradient where the position was kept, zero
// elsewhere), then grad_pos sums over the batch per (position, channel): deterministic, no atomics.
#include "common.cuh"
#include "launch.h"

namespace fastfer {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float score_term(int score, float v) {
  if (score == kL1 || score == kMaxAbs) return fabsf(v);
  if (score == kL2) return v * v;
  return v;
}

// Sums propagate NaN by themselves; for the max kinds NaN is made sticky (torch.amax returns NaN).
__device__ __forceinline__ float score_combine(int score, float acc, float term) {
  if (score == kMax || score == kMaxAbs) return (term > acc || term != term) ? term : acc;
  return acc + term;
}

__device__ __forceinline__ float score_init(int score) {
  return (score == kMax || score == kMaxAbs) ? -INFINITY : 0.0f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) patch_pool_forward_kernel(PatchPoolForwardArgs a) {
  const int64_t b = blockIdx.x;
  const T* x = static_cast<const T*>(a.x) + b * a.stride_b;
  float* scores = a.scores + b * a.N;
  int64_t* index = a.index + b * a.k;
  T* tokens = static_cast<T*>(a.tokens) + b * a.k * a.C;

  // 1. scores: a warp per position when channels are contiguous (coalesced along c), else a thread per
  //    position walking the channel rows (coalesced along positions for NCHW).
  if (a.stride_c == 1) {
    const int lane = threadIdx.x % kWarp;
    for (int64_t n = threadIdx.x / kWarp; n < a.N; n += kThreads / kWarp) {
      float acc = score_init(a.score);
      for (int64_t c = lane; c < a.C; c += kWarp)
        acc = score_combine(a.score, acc, score_term(a.score, to_float(x[n * a.stride_n + c])));
      for (int offset = kWarp / 2; offset > 0; offset /= 2)
        acc = score_combine(a.score, acc, __shfl_xor_sync(0xffffffffu, acc, offset));
      if (lane == 0) scores[n] = acc;
    }
  } else {
    for (int64_t n = threadIdx.x; n < a.N; n += kThreads) {
      float acc = score_init(a.score);
      for (int64_t c = 0; c < a.C; ++c)
        acc = score_combine(a.score, acc, score_term(a.score, to_float(x[n * a.stride_n + c * a.stride_c])));
      scores[n] = acc;
    }
  }
  __syncthreads();

  // 2. top-k positions, ascending
  select_topk_ascending(scores, a.N, a.k, 0, index);
  __syncthreads();

  // 3. gather into (k, C) tokens: consecutive threads write consecutive channels
  for (int64_t e = threadIdx.x; e < a.k * a.C; e += kThreads) {
    const int64_t t = e / a.C, c = e % a.C, n = index[t];
    const T v = x[n * a.stride_n + c * a.stride_c];
    tokens[e] = a.pos == nullptr ? v : from_float<T>(to_float(v) + a.pos[n * a.C + c]);
  }
}

__global__ void inverse_index_kernel(const int64_t* index, int64_t N, int64_t k, int32_t* slot) {
  const int64_t b = blockIdx.x;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) slot[b * N + n] = -1;
  __syncthreads();
  for (int64_t t = threadIdx.x; t < k; t += blockDim.x) slot[b * N + index[b * k + t]] = static_cast<int32_t>(t);
}

// One thread per element of grad_x, enumerated in grad_x's memory order (positions fastest for NCHW).
template <typename T>
__global__ void patch_pool_backward_kernel(PatchPoolBackwardArgs a, const int32_t* slot) {
  const int64_t total = a.B * a.N * a.C;
  const bool positions_fastest = a.stride_n < a.stride_c;
  const T* grad = static_cast<const T*>(a.grad_tokens);
  T* grad_x = static_cast<T*>(a.grad_x);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / (a.N * a.C), rest = e % (a.N * a.C);
    const int64_t n = positions_fastest ? rest % a.N : rest / a.C;
    const int64_t c = positions_fastest ? rest / a.N : rest % a.C;
    const int32_t s = slot[b * a.N + n];
    grad_x[b * a.stride_b + n * a.stride_n + c * a.stride_c] = s < 0 ? from_float<T>(0.0f) : grad[(b * a.k + s) * a.C + c];
  }
}

template <typename T>
__global__ void grad_pos_kernel(PatchPoolBackwardArgs a, const int32_t* slot) {
  const T* grad = static_cast<const T*>(a.grad_tokens);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < a.N * a.C; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / a.C, c = e % a.C;
    float acc = 0.0f;
    for (int64_t b = 0; b < a.B; ++b) {
      const int32_t s = slot[b * a.N + n];
      if (s >= 0) acc += to_float(grad[(b * a.k + s) * a.C + c]);
    }
    a.grad_pos[e] = acc;
  }
}

int blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace

const char* patch_pool_forward(const PatchPoolForwardArgs& a, void* stream) {
  dispatch(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    patch_pool_forward_kernel<T><<<static_cast<unsigned>(a.B), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  });
  return last_error();
}

const char* patch_pool_backward(const PatchPoolBackwardArgs& a, int32_t* workspace, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  inverse_index_kernel<<<static_cast<unsigned>(a.B), kThreads, 0, s>>>(a.index, a.N, a.k, workspace);
  dispatch(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    patch_pool_backward_kernel<T><<<blocks_for(a.B * a.N * a.C), kThreads, 0, s>>>(a, workspace);
    if (a.grad_pos != nullptr) grad_pos_kernel<T><<<blocks_for(a.N * a.C), kThreads, 0, s>>>(a, workspace);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace fastfer
