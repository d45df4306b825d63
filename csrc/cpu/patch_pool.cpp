// Attentive Patch Pooling on CPU (docs/design.md §2.1): per image, one pass over the map for the channel scores,
// top-k selection, and the gather of the kept positions (+ pos) into token layout. Images run in parallel.
//
// The map is read through (batch, position, channel) strides, so NCHW, channels_last and (B, N, C) token
// inputs need no copy. The loop order follows the memory order: with positions contiguous (NCHW) the
// scores of all positions are accumulated one channel row at a time (vectorised along positions); with
// channels contiguous each position is reduced along its channels (vectorised with partial lanes).
#include <vector>

#include "common.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // see attention.cpp

namespace fastfer {
namespace cpu {
namespace {

template <int kScore>
inline float score_init() {
  return kScore == kMax || kScore == kMaxAbs ? -kInf : 0.0f;
}

template <int kScore>
inline float score_term(float v) {
  if (kScore == kL1 || kScore == kMaxAbs) return std::fabs(v);
  if (kScore == kL2) return v * v;
  return v;
}

// Sums propagate NaN by themselves; for the max kinds a NaN term is made sticky explicitly, because the
// reference (torch.amax) returns NaN for a row containing one.
template <int kScore>
inline float score_combine(float acc, float term) {
  if (kScore == kMax || kScore == kMaxAbs) return (term > acc || term != term) ? term : acc;
  return acc + term;
}

template <int kScore>
inline float lanes_combine(const float* lanes, int count) {
  float acc = score_init<kScore>();
  for (int l = 0; l < count; ++l) acc = score_combine<kScore>(acc, lanes[l]);
  return acc;
}

}  // namespace

#if FASTFER_ISA_VARIANTS
namespace avx512 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define FASTFER_ISA_LEVEL 2
#include "patch_pool_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
}  // namespace avx512
namespace avx2 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v3")))
#define FASTFER_ISA_LEVEL 1
#include "patch_pool_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
}  // namespace avx2
#endif
namespace portable {
#define FASTFER_ISA_ATTR
#define FASTFER_ISA_LEVEL 0
#include "patch_pool_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
}  // namespace portable

namespace {

// The score loops of the variant isa (resolved: never kAuto).
template <int kScore, typename T>
void image_scores(const T* x, const PatchPoolForwardArgs& a, float* scores, Isa isa) {
  const bool channel_major = a.stride_c == 1 || a.stride_c < a.stride_n;
#define FASTFER_SCORES(ns)                                                                  \
  return channel_major ? ns::scores_channel_major<kScore>(x, a.N, a.C, a.stride_n, a.stride_c, scores) \
                       : ns::scores_position_major<kScore>(x, a.N, a.C, a.stride_n, a.stride_c, scores)
  switch (isa) {
#if FASTFER_ISA_VARIANTS
    case Isa::kAvx512: FASTFER_SCORES(avx512);
    case Isa::kAvx2: FASTFER_SCORES(avx2);
#endif
    default: FASTFER_SCORES(portable);
  }
#undef FASTFER_SCORES
}

template <typename T>
void image_scores_any(const T* x, const PatchPoolForwardArgs& a, float* scores, Isa isa) {
  switch (a.score) {
    case kL1: return image_scores<kL1>(x, a, scores, isa);
    case kSum: return image_scores<kSum>(x, a, scores, isa);
    case kL2: return image_scores<kL2>(x, a, scores, isa);
    case kMax: return image_scores<kMax>(x, a, scores, isa);
    default: return image_scores<kMaxAbs>(x, a, scores, isa);
  }
}

// tokens[t, c] = x[index[t], c] (+ pos[index[t], c], added in fp32 and rounded once, as the reference).
template <typename T>
void gather_tokens(const T* x, const PatchPoolForwardArgs& a, const int64_t* index, T* tokens) {
  const int64_t C = a.C;
  if (a.stride_c <= a.stride_n) {  // channels contiguous: copy rows
    for (int64_t t = 0; t < a.k; ++t) {
      const T* src = x + index[t] * a.stride_n;
      T* dst = tokens + t * C;
      if (a.pos == nullptr) {
        for (int64_t c = 0; c < C; ++c) dst[c] = src[c * a.stride_c];
      } else {
        const float* p = a.pos + index[t] * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = from_float<T>(to_float(src[c * a.stride_c]) + p[c]);
      }
    }
    return;
  }
  // positions contiguous (NCHW): a transpose; tiles of channels keep the writes contiguous per token.
  constexpr int64_t kTile = 32;
  for (int64_t c0 = 0; c0 < C; c0 += kTile) {
    const int64_t c1 = std::min(C, c0 + kTile);
    for (int64_t t = 0; t < a.k; ++t) {
      const T* src = x + index[t] * a.stride_n;
      T* dst = tokens + t * C;
      if (a.pos == nullptr) {
        for (int64_t c = c0; c < c1; ++c) dst[c] = src[c * a.stride_c];
      } else {
        const float* p = a.pos + index[t] * C;
        for (int64_t c = c0; c < c1; ++c) dst[c] = from_float<T>(to_float(src[c * a.stride_c]) + p[c]);
      }
    }
  }
}

template <typename T>
void forward_typed(const PatchPoolForwardArgs& a, Isa isa) {
  const T* x = static_cast<const T*>(a.x);
  T* tokens = static_cast<T*>(a.tokens);
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<int32_t> order(a.N);
    std::vector<uint8_t> kept(a.N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < a.B; ++b) {
      const T* xb = x + b * a.stride_b;
      float* scores = a.scores + b * a.N;
      int64_t* index = a.index + b * a.k;
      image_scores_any(xb, a, scores, isa);
      select_topk_ascending(scores, a.N, a.k, 0, index, order.data(), kept.data());
      if (a.stride_n == 1 && a.stride_c > a.stride_n) {  // NCHW: transposed in register blocks
        float* tmp = thread_scratch(6, a.N * a.C);
        switch (isa) {
#if FASTFER_ISA_VARIANTS
          case Isa::kAvx512:
            avx512::gather_position_major(xb, a.N, a.C, a.stride_c, index, a.k, a.pos, tokens + b * a.k * a.C, tmp);
            break;
          case Isa::kAvx2:
            avx2::gather_position_major(xb, a.N, a.C, a.stride_c, index, a.k, a.pos, tokens + b * a.k * a.C, tmp);
            break;
#endif
          default:
            portable::gather_position_major(xb, a.N, a.C, a.stride_c, index, a.k, a.pos, tokens + b * a.k * a.C, tmp);
        }
      } else {
        gather_tokens(xb, a, index, tokens + b * a.k * a.C);
      }
    }
  }
}

// grad_x[b, n, :] = grad_tokens[b, slot, :] where index[b, slot] = n, else 0 (every element written once).
template <typename T>
void backward_typed(const PatchPoolBackwardArgs& a, Isa isa) {
  const T* grad = static_cast<const T*>(a.grad_tokens);
  T* grad_x = static_cast<T*>(a.grad_x);
  const int64_t N = a.N, C = a.C, k = a.k;
  // slot[b, n]: which token row position n went to, or -1 (also used by the grad_pos pass)
  std::vector<int32_t> slots(a.B * N);
#pragma omp parallel num_threads(a.threads)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < a.B; ++b) {
      int32_t* slot = slots.data() + b * N;
      std::fill(slot, slot + N, -1);
      for (int64_t t = 0; t < k; ++t) slot[a.index[b * k + t]] = static_cast<int32_t>(t);
      const T* gb = grad + b * k * C;
      T* xb = grad_x + b * a.stride_b;
      if (a.stride_c <= a.stride_n) {  // channels contiguous: one row per position
        for (int64_t n = 0; n < N; ++n) {
          T* dst = xb + n * a.stride_n;
          if (slot[n] < 0) {
            for (int64_t c = 0; c < C; ++c) dst[c * a.stride_c] = T(0.0f);
          } else {
            const T* src = gb + slot[n] * C;
            for (int64_t c = 0; c < C; ++c) dst[c * a.stride_c] = src[c];
          }
        }
      } else if (a.stride_n == 1) {  // NCHW: a transpose of the kept rows, in register blocks
        switch (isa) {
#if FASTFER_ISA_VARIANTS
          case Isa::kAvx512: avx512::scatter_position_major(gb, slot, N, C, a.stride_c, xb); break;
          case Isa::kAvx2: avx2::scatter_position_major(gb, slot, N, C, a.stride_c, xb); break;
#endif
          default: portable::scatter_position_major(gb, slot, N, C, a.stride_c, xb);
        }
      } else {  // positions strided: one channel row at a time
        for (int64_t c = 0; c < C; ++c) {
          T* dst = xb + c * a.stride_c;
          for (int64_t n = 0; n < N; ++n) dst[n * a.stride_n] = slot[n] < 0 ? T(0.0f) : gb[slot[n] * C + c];
        }
      }
    }
    if (a.grad_pos != nullptr) {
      // grad_pos[n, :] = Σ_b grad_x[b, n, :] in fp32, positions in parallel (no atomics, deterministic).
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        float* row = a.grad_pos + n * C;
        std::fill(row, row + C, 0.0f);
        for (int64_t b = 0; b < a.B; ++b) {
          const int32_t s = slots[b * N + n];
          if (s < 0) continue;
          const T* src = grad + (b * k + s) * C;
          for (int64_t c = 0; c < C; ++c) row[c] += to_float(src[c]);
        }
      }
    }
  }
}

}  // namespace

// Patch pooling has no dot products: the AMX variant runs the AVX-512 code.
Isa patch_pool_isa(Isa isa) {
  isa = resolve_isa(isa);
  return isa == Isa::kAmx ? Isa::kAvx512 : isa;
}

void patch_pool_forward(const PatchPoolForwardArgs& a, Isa isa) {
  isa = patch_pool_isa(isa);
  dispatch(a.dtype, [&](auto tag) { forward_typed<decltype(tag)>(a, isa); });
}

void patch_pool_backward(const PatchPoolBackwardArgs& a, Isa isa) {
  isa = patch_pool_isa(isa);
  dispatch(a.dtype, [&](auto tag) { backward_typed<decltype(tag)>(a, isa); });
}

}  // namespace cpu
}  // namespace fastfer
