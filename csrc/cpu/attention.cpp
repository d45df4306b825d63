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
constexpr int64_t kKeyBlock = 256;   // keys per online-softmax step (a multiple of kCols): ViT lengths in one
constexpr int kLanes = 16;
constexpr int64_t kChunkRows = 128;  // backward: query rows whose P and dS are kept at once (× kRowsBwd)

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

// dst[c][r] = src[r][c] for r < rows, c < cols, between fp32 scratch buffers. The operands are first copied
// row by row out of qkv (sequential reads the hardware prefetcher follows) and transposed here in cache: a
// transposing read straight from qkv jumps a whole token (3·H·D elements) per element and was the
// largest cost outside the arithmetic.
inline void transpose(const float* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for (int64_t c = 0; c < cols; ++c) {
      float* out = dst + c * ld_dst;
      for (int64_t r = r0; r < r1; ++r) out[r] = src[r * ld_src + c];
    }
  }
}

// One online-softmax step of a tile of kRowsFwd query rows over a key block. s is the tile's logits,
// kRowsFwd × padded contiguous, of which columns [valid, padded) are padding. Turns s into probabilities
// relative to each row's new running max and rescales the running sums and the output rows. The
// exponentials run as one loop over the whole tile: per-row loops of a few hundred elements spent more
// time entering and leaving the vector loop than computing.
FASTFER_INLINE void softmax_step(float* s, int64_t valid, int64_t padded, float* running_max, float* running_sum,
                                 float* o, int64_t width) {
  float alpha[kRowsFwd];
  for (int r = 0; r < kRowsFwd; ++r) {
    float* row = s + r * padded;
    float lanes[kLanes];
    for (int l = 0; l < kLanes; ++l) lanes[l] = running_max[r];
    int64_t j = 0;
    for (; j + kLanes <= valid; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];  // NaN ignored:
    float new_max = running_max[r];                                                              // it reaches O via p
    for (int l = 0; l < kLanes; ++l) new_max = lanes[l] > new_max ? lanes[l] : new_max;
    for (; j < valid; ++j) new_max = row[j] > new_max ? row[j] : new_max;
    // All logits −inf so far: subtract 0 instead, so p = 0 rather than exp(−inf + inf) = NaN.
    const float base = new_max == -kInf ? 0.0f : new_max;
    alpha[r] = exp_fast(running_max[r] - base);
    running_max[r] = new_max;
    for (j = 0; j < valid; ++j) row[j] -= base;
    for (; j < padded; ++j) row[j] = -kInf;  // exp(−inf) = 0: padding keys get no weight
  }
  for (int64_t e = 0; e < kRowsFwd * padded; ++e) s[e] = exp_fast(s[e]);
  for (int r = 0; r < kRowsFwd; ++r) {
    const float* row = s + r * padded;
    float lanes[kLanes] = {};
    for (int64_t j = 0; j < padded; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += row[j + l];
    float total = 0.0f;
    for (int l = 0; l < kLanes; ++l) total += lanes[l];
    running_sum[r] = running_sum[r] * alpha[r] + total;
    for (int64_t d = 0; d < width; ++d) o[r * width + d] *= alpha[r];
  }
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
        tile_a_bt<kRowsFwd>(q + i0 * g.d_pad, g.d_pad, kt + n0 + w0, g.n_pad, g.D, s + w0, padded);
      softmax_step(s, valid, padded, row_max, row_sum, o_tile, g.d_pad);
      tile_p_v<kRowsFwd>(s, padded, v + n0 * g.d_pad, g.d_pad, padded, g.d_pad, o_tile, g.d_pad);
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
// Query rows go in chunks of kChunkRows: P and dS of a chunk are kept (p, ds: kChunkRows × n_pad scratch)
// so that dV and dK accumulate over the whole chunk with their tiles in registers (tile_pt_x), instead of
// streaming dK and dV through memory for every 8-row tile (that took a quarter of the backward's time).
FASTFER_CPU_CLONES void attend_grad_fp32(const float* qs, const float* d_o, const float* lse, const float* delta,
                                         const float* kt, const float* k, const float* vt, const Dims& g, float* dq,
                                         float* dk, float* dv, float* p, float* ds) {
  std::fill(dk, dk + g.n_pad * g.d_pad, 0.0f);
  std::fill(dv, dv + g.n_pad * g.d_pad, 0.0f);
  std::fill(dq, dq + g.m_pad * g.d_pad, 0.0f);
  for (int64_t c0 = 0; c0 < g.m_pad; c0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, g.m_pad - c0);
    for (int64_t i0 = 0; i0 < rows; i0 += kRowsBwd) {
      const float* q_tile = qs + (c0 + i0) * g.d_pad;
      const float* do_tile = d_o + (c0 + i0) * g.d_pad;
      float* p_tile = p + i0 * g.n_pad;
      float* ds_tile = ds + i0 * g.n_pad;
      for (int64_t w0 = 0; w0 < g.n_pad; w0 += kCols) {
        tile_a_bt<kRowsBwd>(q_tile, g.d_pad, kt + w0, g.n_pad, g.D, p_tile + w0, g.n_pad);    // S
        tile_a_bt<kRowsBwd>(do_tile, g.d_pad, vt + w0, g.n_pad, g.D, ds_tile + w0, g.n_pad);  // dP = dO Vᵀ
      }
      for (int r = 0; r < kRowsBwd; ++r) {
        float* p_row = p_tile + r * g.n_pad;
        float* ds_row = ds_tile + r * g.n_pad;
        const float row_lse = lse[c0 + i0 + r], row_delta = delta[c0 + i0 + r];
        for (int64_t j = 0; j < g.n_pad; ++j) {
          const float pj = j < g.N ? exp_fast(p_row[j] - row_lse) : 0.0f;
          p_row[j] = pj;
          ds_row[j] = pj * (ds_row[j] - row_delta);
        }
      }
      tile_p_v<kRowsBwd>(ds_tile, g.n_pad, k, g.d_pad, g.n_pad, g.d_pad, dq + (c0 + i0) * g.d_pad, g.d_pad);  // dQ = dS K
    }
    tile_pt_x(p, g.n_pad, d_o + c0 * g.d_pad, g.d_pad, rows, g.n_pad, g.d_pad, dv, g.d_pad);  // dV += Pᵀ dO
    tile_pt_x(ds, g.n_pad, qs + c0 * g.d_pad, g.d_pad, rows, g.n_pad, g.d_pad, dk, g.d_pad);  // dK += dSᵀ (scale·Q)
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
    std::vector<float> q(g.m_pad * g.d_pad), k(g.n_pad * g.d_pad), kt(g.D * g.n_pad), v(g.n_pad * g.d_pad);
    std::vector<float> o(g.m_pad * g.d_pad);
    std::vector<float> lse(g.m_pad), scratch(kRowsFwd * kKeyBlock);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.B * s.H; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      const T* head = qkv + b * s.stride_b + h * s.stride_h;
      const int64_t* rows = a.index + b * s.M;
      load_rows(head, s.stride_n, s.stride_d, rows, s.M, s.D, s.scale, q.data(), g.d_pad, g.m_pad);
      load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, s.N, s.D, 1.0f, k.data(), g.d_pad, g.n_pad);
      transpose(k.data(), g.n_pad, g.D, g.d_pad, kt.data(), g.n_pad);
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
    std::vector<float> kt(g.D * g.n_pad), k(g.n_pad * g.d_pad), v(g.n_pad * g.d_pad), vt(g.D * g.n_pad);
    std::vector<float> dq(g.m_pad * g.d_pad), dk(g.n_pad * g.d_pad), dv(g.n_pad * g.d_pad);
    std::vector<float> p(kChunkRows * g.n_pad), ds(kChunkRows * g.n_pad);
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
      load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, s.N, s.D, 1.0f, k.data(), g.d_pad, g.n_pad);
      load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, s.N, s.D, 1.0f, v.data(), g.d_pad, g.n_pad);
      transpose(k.data(), g.n_pad, g.D, g.d_pad, kt.data(), g.n_pad);
      transpose(v.data(), g.n_pad, g.D, g.d_pad, vt.data(), g.n_pad);
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
