// CLS-row scores over all heads and token selection on CUDA (docs/design.md §2.2), one block per image.
//
// A warp per (head, key) dots the CLS query with the key (lanes over the head dim, coalesced) into the
// B·H·N logits workspace — one 1×D · D×N product per head, no N×N matrix. logit_sum (APViT) then adds the
// heads per key; prob_mean (EViT) first turns each head's row into softmax probabilities in place (a warp
// per head: max, sum, normalise), then averages them. CLS stays first; the top `keep` of positions
// 1..N-1 follow in ascending order.
#include "common.cuh"
#include "launch.h"

namespace fastfer {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;

template <typename T>
__global__ void __launch_bounds__(kThreads) cls_select_kernel(ClsSelectArgs a, float* workspace) {
  const TokenPoolArgs& s = a.qkv;
  const int64_t b = blockIdx.x, N = s.N, H = s.H;
  const T* qkv = static_cast<const T*>(s.qkv) + b * s.stride_b;
  float* logits = workspace + b * H * N;  // (H, N)
  float* scores = a.cls_scores + b * N;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  for (int64_t pair = warp; pair < H * N; pair += kWarps) {
    const int64_t h = pair / N, j = pair % N;
    const T* q0 = qkv + h * s.stride_h;
    const T* key = qkv + s.stride_3 + j * s.stride_n + h * s.stride_h;
    float acc = 0.0f;
    for (int64_t d = lane; d < s.D; d += kWarp) acc += to_float(q0[d * s.stride_d]) * to_float(key[d * s.stride_d]);
    acc = warp_sum(acc);
    if (lane == 0) logits[h * N + j] = s.scale * acc;
  }
  __syncthreads();

  if (a.score == kProbMean) {
    for (int64_t h = warp; h < H; h += kWarps) {
      float* row = logits + h * N;
      float row_max = -INFINITY;
      for (int64_t j = lane; j < N; j += kWarp) row_max = row[j] > row_max ? row[j] : row_max;
      row_max = warp_max(row_max);
      const float base = row_max == -INFINITY ? 0.0f : row_max;  // all −inf: 0/0 = NaN, as softmax
      float total = 0.0f;
      for (int64_t j = lane; j < N; j += kWarp) total += expf(row[j] - base);
      total = warp_sum(total);
      for (int64_t j = lane; j < N; j += kWarp) row[j] = expf(row[j] - base) / total;
    }
    __syncthreads();
  }
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    float acc = 0.0f;
    for (int64_t h = 0; h < H; ++h) acc += logits[h * N + j];
    scores[j] = a.score == kProbMean ? acc / static_cast<float>(H) : acc;
  }
  __syncthreads();

  int64_t* index = a.index + b * s.M;
  if (!a.select) {
    for (int64_t j = threadIdx.x; j < N; j += kThreads) index[j] = j;
  } else {
    if (threadIdx.x == 0) index[0] = 0;  // CLS is always kept, first
    select_topk_ascending(scores + 1, N - 1, s.M - 1, 1, index + 1);
  }
}

}  // namespace

const char* cls_select(const ClsSelectArgs& a, float* workspace, void* stream) {
  dispatch(a.qkv.dtype, [&](auto tag) {
    using T = decltype(tag);
    cls_select_kernel<T><<<static_cast<unsigned>(a.qkv.B), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a,
                                                                                                         workspace);
  });
  return last_error();
}

}  // namespace cuda
}  // namespace fastfer
