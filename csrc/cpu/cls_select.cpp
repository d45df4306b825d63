// CLS-row scores over all heads and token selection on CPU (docs/design.md §2.2), for one image.
//
// The attention forward (attention.cpp) computes each head's CLS logits row once, from the same fp32
// K scratch the attention uses, and hands it here together with the row's log-sum-exp: logit_sum (APViT)
// adds the logits over heads; prob_mean (EViT) averages each head's softmax row exp(l − lse). Then CLS
// (position 0) is kept first and the top `keep` of positions 1..N-1 follow in ascending order.
#include "common.h"

namespace fastfer {
namespace cpu {

void score_and_select(const float* logits, int64_t ld, const float* lse, int64_t H, int64_t N, int64_t M, int score,
                      bool select, float* scores, int64_t* index, int32_t* order, uint8_t* kept) {
  std::fill(scores, scores + N, 0.0f);
  if (score == kLogitSum) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < N; ++j) scores[j] += logits[h * ld + j];
  } else {  // prob_mean. An all −inf row has lse = −inf and gives exp(NaN) = NaN, as softmax's 0/0.
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < N; ++j) scores[j] += std::exp(logits[h * ld + j] - lse[h]);
    for (int64_t j = 0; j < N; ++j) scores[j] /= static_cast<float>(H);
  }
  if (!select) {
    for (int64_t j = 0; j < N; ++j) index[j] = j;
    return;
  }
  index[0] = 0;  // CLS is always kept, first
  select_topk_ascending(scores + 1, N - 1, M - 1, 1, index + 1, order, kept);
}

}  // namespace cpu
}  // namespace fastfer
