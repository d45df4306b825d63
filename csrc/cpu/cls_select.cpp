// CLS-row scores over all heads and token selection on CPU (DESIGN §2.2), one image per task.
//
// For each head the CLS query q₀ʰ is dotted with every key: one 1×D · D×N product per head, no N×N matrix.
// logit_sum (APViT) adds scale·⟨q₀ʰ, kⱼʰ⟩ over heads; prob_mean (EViT) averages each head's softmax row.
// Then CLS (position 0) is kept first and the top `keep` of positions 1..N-1 follow in ascending order.
#include <vector>

#include "common.h"

namespace fastfer {
namespace cpu {
namespace {

// ⟨q, k⟩ with q fp32 contiguous and k read with stride; partial lanes let the contiguous case vectorise.
template <typename T>
FASTFER_CPU_CLONES float dot_strided(const float* q, const T* k, int64_t stride, int64_t D) {
  constexpr int kLanes = 8;
  float lanes[kLanes] = {};
  int64_t d = 0;
  if (stride == 1) {
    for (; d + kLanes <= D; d += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += q[d + l] * to_float(k[d + l]);
  }
  float acc = 0.0f;
  for (int l = 0; l < kLanes; ++l) acc += lanes[l];
  for (; d < D; ++d) acc += q[d] * to_float(k[d * stride]);
  return acc;
}

template <typename T>
void cls_select_typed(const ClsSelectArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const T* qkv = static_cast<const T*>(s.qkv);
  const int64_t N = s.N, H = s.H, D = s.D;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> logits(H * N), q0(D);
    std::vector<int32_t> order(N);
    std::vector<uint8_t> kept(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      const T* qkv_b = qkv + b * s.stride_b;
      for (int64_t h = 0; h < H; ++h) {
        const T* head = qkv_b + h * s.stride_h;
        for (int64_t d = 0; d < D; ++d) q0[d] = to_float(head[d * s.stride_d]);
        for (int64_t j = 0; j < N; ++j)
          logits[h * N + j] = s.scale * dot_strided(q0.data(), head + s.stride_3 + j * s.stride_n, s.stride_d, D);
      }
      float* scores = a.cls_scores + b * N;
      std::fill(scores, scores + N, 0.0f);
      if (a.score == kLogitSum) {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < N; ++j) scores[j] += logits[h * N + j];
      } else {  // prob_mean: softmax of each head's row, then the mean over heads
        for (int64_t h = 0; h < H; ++h) {
          const float* row = logits.data() + h * N;
          float row_max = -kInf;
          for (int64_t j = 0; j < N; ++j) row_max = (row[j] > row_max || row[j] != row[j]) ? row[j] : row_max;
          const float base = row_max == -kInf ? 0.0f : row_max;  // an all −inf row gives 0/0 = NaN, as softmax
          float total = 0.0f;
          for (int64_t j = 0; j < N; ++j) total += std::exp(row[j] - base);
          const float inv = 1.0f / total;
          for (int64_t j = 0; j < N; ++j) scores[j] += std::exp(row[j] - base) * inv;
        }
        for (int64_t j = 0; j < N; ++j) scores[j] /= static_cast<float>(H);
      }
      int64_t* index = a.index + b * s.M;
      if (!a.select) {
        for (int64_t j = 0; j < N; ++j) index[j] = j;
      } else {
        index[0] = 0;  // CLS is always kept, first
        select_topk_ascending(scores + 1, N - 1, s.M - 1, 1, index + 1, order.data(), kept.data());
      }
    }
  }
}

}  // namespace

void cls_select(const ClsSelectArgs& a) {
  dispatch(a.qkv.dtype, [&](auto tag) { cls_select_typed<decltype(tag)>(a); });
}

}  // namespace cpu
}  // namespace fastfer
