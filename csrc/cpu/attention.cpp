// Attention for the kept query rows only, on CPU (DESIGN §2.2): forward with an online softmax and a
// flash-style backward that recomputes P from the saved log-sum-exp. One (image, head) pair per task.
//
// Each task converts its head's operands once into fp32 scratch (gathered, scaled and zero-padded; K also
// transposed), then runs the register-tiled loops of attention_tiles.h on them. Identities (natural log):
//   S = scale·Q Kᵀ,  lse = log Σ_j exp S,  O = exp(S − lse) V
//   P = exp(S − lse),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q
// Dropped query rows get dQ = 0. Every output element is written by exactly one task: no atomics.
#include <vector>

#include "attention_tiles.h"

namespace fastfer {
namespace cpu {
namespace {

constexpr int kRowsFwd = 8;          // query rows per forward tile
constexpr int kRowsBwd = 8;          // query rows per backward tile
constexpr int64_t kKeyBlock = 128;   // keys per online-softmax step (a multiple of kCols)
constexpr int kLanes = 16;

// Sizes of one (image, head) task; *_pad are the zero-padded scratch extents.
struct Dims {
  int64_t N, M, D, n_pad, m_pad, d_pad;
};

Dims dims_of(const TokenPoolArgs& s, int rows) {
  return Dims{s.N, s.M, s.D, round_up(s.N, kCols), round_up(s.M, rows), round_up(s.D, kCols)};
}

// dst[i][0..ld) = mul · src[row_i][0..D), zero-padded to ld columns and `total` rows.
// row_i = positions[i] when given, else i.
template <typename T>
void load_rows(const T* src, int64_t stride_n, int64_t stride_d, const int64_t* positions, int64_t count, int64_t D,
               float mul, float* dst, int64_t ld, int64_t total) {
  for (int64_t i = 0; i < total; ++i) {
    float* row = dst + i * ld;
    int64_t d = 0;
    if (i < count) {
      const T* s = src + (positions ? positions[i] : i) * stride_n;
      for (; d < D; ++d) row[d] = mul * to_float(s[d * stride_d]);
    }
    for (; d < ld; ++d) row[d] = 0.0f;
  }
}

// dst[d][j] = src[j][d] for j < N, zero for N ≤ j < ld.
template <typename T>
void load_transposed(const T* src, int64_t stride_n, int64_t stride_d, int64_t N, int64_t D, float* dst, int64_t ld) {
  for (int64_t d = 0; d < D; ++d) {
    float* row = dst + d * ld;
    for (int64_t j = 0; j < N; ++j) row[j] = to_float(src[j * stride_n + d * stride_d]);
    for (int64_t j = N; j < ld; ++j) row[j] = 0.0f;
  }
}

// One online-softmax step of a query row over a key block: s[0..valid) are logits, s[valid..padded) pad.
// Turns s into probabilities relative to the new running max and rescales the running sum and output.
FASTFER_INLINE void softmax_step(float* s, int64_t valid, int64_t padded, float& running_max, float& running_sum,
                                 float* o, int64_t width) {
  float lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = running_max;
  int64_t j = 0;
  for (; j + kLanes <= valid; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = s[j + l] > lanes[l] ? s[j + l] : lanes[l];  // NaN ignored here;
  float new_max = running_max;                                                             // it reaches O via p
  for (int l = 0; l < kLanes; ++l) new_max = lanes[l] > new_max ? lanes[l] : new_max;
  for (; j < valid; ++j) new_max = s[j] > new_max ? s[j] : new_max;
  // All logits −inf so far: subtract 0 instead, so p = 0 rather than exp(−inf + inf) = NaN.
  const float base = new_max == -kInf ? 0.0f : new_max;
  const float alpha = exp_fast(running_max - base);
  for (int l = 0; l < kLanes; ++l) lanes[l] = 0.0f;
  for (j = 0; j < padded; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float p = (j + l) < valid ? exp_fast(s[j + l] - base) : 0.0f;
      s[j + l] = p;
      lanes[l] += p;
    }
  }
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  running_sum = running_sum * alpha + total;
  for (int64_t d = 0; d < width; ++d) o[d] *= alpha;
  running_max = new_max;
}

// o (m_pad × d_pad) and lse (m_pad) of the scaled queries q (m_pad × d_pad) against kt (D × n_pad) and
// v (n_pad × d_pad). s: kRowsFwd × kKeyBlock scratch.
FASTFER_CPU_CLONES void attend_fp32(const float* q, const float* kt, const float* v, const Dims& g, float* o,
                                    float* lse, float* s) {
  for (int64_t i0 = 0; i0 < g.m_pad; i0 += kRowsFwd) {
    float row_max[kRowsFwd], row_sum[kRowsFwd];
    float* o_tile = o + i0 * g.d_pad;
    for (int r = 0; r < kRowsFwd; ++r) {
      row_max[r] = -kInf;
      row_sum[r] = 0.0f;
    }
    std::fill(o_tile, o_tile + kRowsFwd * g.d_pad, 0.0f);
    for (int64_t n0 = 0; n0 < g.N; n0 += kKeyBlock) {
      const int64_t valid = std::min(kKeyBlock, g.N - n0), padded = round_up(valid, kCols);
      for (int64_t w0 = 0; w0 < padded; w0 += kCols)
        tile_a_bt<kRowsFwd>(q + i0 * g.d_pad, g.d_pad, kt + n0 + w0, g.n_pad, g.D, s + w0, kKeyBlock);
      for (int r = 0; r < kRowsFwd; ++r)
        softmax_step(s + r * kKeyBlock, valid, padded, row_max[r], row_sum[r], o_tile + r * g.d_pad, g.d_pad);
      tile_p_v<kRowsFwd>(s, kKeyBlock, v + n0 * g.d_pad, g.d_pad, padded, g.d_pad, o_tile, g.d_pad);
    }
    for (int r = 0; r < kRowsFwd; ++r) {
      const float inv = 1.0f / row_sum[r];
      for (int64_t d = 0; d < g.d_pad; ++d) o_tile[r * g.d_pad + d] *= inv;
      lse[i0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  }
}

// dq (m_pad × d_pad, before the final ·scale), dk and dv (n_pad × d_pad) for one head. qs = scale·Q and
// d_o are m_pad × d_pad; padded rows have lse = +inf so their P, and hence every contribution, is 0.
// p, ds: kRowsBwd × n_pad scratch.
FASTFER_CPU_CLONES void attend_grad_fp32(const float* qs, const float* d_o, const float* lse, const float* delta,
                                         const float* kt, const float* k, const float* vt, const Dims& g, float* dq,
                                         float* dk, float* dv, float* p, float* ds) {
  std::fill(dk, dk + g.n_pad * g.d_pad, 0.0f);
  std::fill(dv, dv + g.n_pad * g.d_pad, 0.0f);
  std::fill(dq, dq + g.m_pad * g.d_pad, 0.0f);
  for (int64_t i0 = 0; i0 < g.m_pad; i0 += kRowsBwd) {
    const float* q_tile = qs + i0 * g.d_pad;
    const float* do_tile = d_o + i0 * g.d_pad;
    for (int64_t w0 = 0; w0 < g.n_pad; w0 += kCols) {
      tile_a_bt<kRowsBwd>(q_tile, g.d_pad, kt + w0, g.n_pad, g.D, p + w0, g.n_pad);    // S
      tile_a_bt<kRowsBwd>(do_tile, g.d_pad, vt + w0, g.n_pad, g.D, ds + w0, g.n_pad);  // dP = dO Vᵀ
    }
    for (int r = 0; r < kRowsBwd; ++r) {
      float* p_row = p + r * g.n_pad;
      float* ds_row = ds + r * g.n_pad;
      const float row_lse = lse[i0 + r], row_delta = delta[i0 + r];
      for (int64_t j = 0; j < g.n_pad; ++j) {
        const float pj = j < g.N ? exp_fast(p_row[j] - row_lse) : 0.0f;
        p_row[j] = pj;
        ds_row[j] = pj * (ds_row[j] - row_delta);
      }
    }
    tile_pt_x<kRowsBwd>(p, g.n_pad, do_tile, g.d_pad, g.n_pad, g.d_pad, dv, g.d_pad);  // dV += Pᵀ dO
    tile_pt_x<kRowsBwd>(ds, g.n_pad, q_tile, g.d_pad, g.n_pad, g.d_pad, dk, g.d_pad);  // dK += dSᵀ (scale·Q)
    tile_p_v<kRowsBwd>(ds, g.n_pad, k, g.d_pad, g.n_pad, g.d_pad, dq + i0 * g.d_pad, g.d_pad);  // dQ = dS K
  }
}

template <typename T>
void forward_typed(const AttentionForwardArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const Dims g = dims_of(s, kRowsFwd);
  const T* qkv = static_cast<const T*>(s.qkv);
  T* out = static_cast<T*>(a.out);
  const int64_t HD = s.H * s.D;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> q(g.m_pad * g.d_pad), kt(g.D * g.n_pad), v(g.n_pad * g.d_pad), o(g.m_pad * g.d_pad);
    std::vector<float> lse(g.m_pad), scratch(kRowsFwd * kKeyBlock);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.B * s.H; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      const T* head = qkv + b * s.stride_b + h * s.stride_h;
      const int64_t* rows = a.index + b * s.M;
      load_rows(head, s.stride_n, s.stride_d, rows, s.M, s.D, s.scale, q.data(), g.d_pad, g.m_pad);
      load_transposed(head + s.stride_3, s.stride_n, s.stride_d, s.N, s.D, kt.data(), g.n_pad);
      load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, s.N, s.D, 1.0f, v.data(), g.d_pad, g.n_pad);
      attend_fp32(q.data(), kt.data(), v.data(), g, o.data(), lse.data(), scratch.data());
      for (int64_t i = 0; i < s.M; ++i) {
        T* dst = out + (b * s.M + i) * HD + h * s.D;
        for (int64_t d = 0; d < s.D; ++d) dst[d] = from_float<T>(o[i * g.d_pad + d]);
        a.lse[bh * s.M + i] = lse[i];
      }
    }
  }
}

template <typename T>
void backward_typed(const AttentionBackwardArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const Dims g = dims_of(s, kRowsBwd);
  const T* qkv = static_cast<const T*>(s.qkv);
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const T* out = static_cast<const T*>(a.out);
  T* dqkv = static_cast<T*>(a.dqkv);
  const int64_t HD = s.H * s.D;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> qs(g.m_pad * g.d_pad), d_o(g.m_pad * g.d_pad), lse(g.m_pad), delta(g.m_pad);
    std::vector<float> kt(g.D * g.n_pad), k(g.n_pad * g.d_pad), vt(g.D * g.n_pad);
    std::vector<float> dq(g.m_pad * g.d_pad), dk(g.n_pad * g.d_pad), dv(g.n_pad * g.d_pad);
    std::vector<float> p(kRowsBwd * g.n_pad), ds(kRowsBwd * g.n_pad);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.B * s.H; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      const T* head = qkv + b * s.stride_b + h * s.stride_h;
      const int64_t* rows = a.index + b * s.M;
      const int64_t row0 = b * s.M * HD + h * s.D;  // (b, 0, h, 0) in the (B, M, H·D) tensors
      load_rows(head, s.stride_n, s.stride_d, rows, s.M, s.D, s.scale, qs.data(), g.d_pad, g.m_pad);
      load_rows(grad_out + row0, HD, 1, nullptr, s.M, s.D, 1.0f, d_o.data(), g.d_pad, g.m_pad);
      for (int64_t i = 0; i < g.m_pad; ++i) {
        float acc = 0.0f;
        if (i < s.M) {
          for (int64_t d = 0; d < s.D; ++d) acc += d_o[i * g.d_pad + d] * to_float(out[row0 + i * HD + d]);
        }
        delta[i] = acc;
        lse[i] = i < s.M ? a.lse[bh * s.M + i] : kInf;
      }
      load_transposed(head + s.stride_3, s.stride_n, s.stride_d, s.N, s.D, kt.data(), g.n_pad);
      load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, s.N, s.D, 1.0f, k.data(), g.d_pad, g.n_pad);
      load_transposed(head + 2 * s.stride_3, s.stride_n, s.stride_d, s.N, s.D, vt.data(), g.n_pad);
      attend_grad_fp32(qs.data(), d_o.data(), lse.data(), delta.data(), kt.data(), k.data(), vt.data(), g, dq.data(),
                       dk.data(), dv.data(), p.data(), ds.data());
      // dqkv (B, N, 3, H, D) contiguous: zero every query slot of this head, then fill the kept rows.
      T* dhead = dqkv + b * s.N * 3 * HD + h * s.D;
      for (int64_t j = 0; j < s.N; ++j) {
        T* row = dhead + j * 3 * HD;
        for (int64_t d = 0; d < s.D; ++d) {
          row[d] = T(0.0f);
          row[HD + d] = from_float<T>(dk[j * g.d_pad + d]);
          row[2 * HD + d] = from_float<T>(dv[j * g.d_pad + d]);
        }
      }
      for (int64_t i = 0; i < s.M; ++i) {
        T* row = dhead + rows[i] * 3 * HD;
        for (int64_t d = 0; d < s.D; ++d) row[d] = from_float<T>(s.scale * dq[i * g.d_pad + d]);
      }
    }
  }
}

}  // namespace

void attention_forward(const AttentionForwardArgs& a) {
  dispatch(a.qkv.dtype, [&](auto tag) { forward_typed<decltype(tag)>(a); });
}

void attention_backward(const AttentionBackwardArgs& a) {
  dispatch(a.qkv.dtype, [&](auto tag) { backward_typed<decltype(tag)>(a); });
}

}  // namespace cpu
}  // namespace fastfer
