// Token-pool attention on CPU, one instruction-set variant (isa.h): no include guard; attention.cpp includes
// this file once per variant inside namespace fastfer::cpu::<variant> with FASTFER_ISA_ATTR,
// FASTFER_ISA_LEVEL and FASTFER_ISA_ROWS (rows of a register tile: 8 with 32 zmm registers, fewer with 16)
// defined. See attention.cpp for the algorithm.

#include "vec_impl.h"

constexpr int kR = FASTFER_ISA_ROWS;

// Sizes of one head; *_pad are the zero-padded scratch extents (multiples of 16 lanes).
struct Dims {
  int64_t N, M, D, n_pad, d_pad;
};

inline Dims dims_of(const TokenPoolArgs& s) {
  return Dims{s.N, s.M, s.D, round_up(s.N, kLanes), round_up(s.D, kLanes)};
}

// ---- forward ------------------------------------------------------------------------------------------

// Phase 1 of the forward for one (image, head): K (transposed: kt, D × n_pad) and V (v, N × d_pad) into
// the head's shared fp32 scratch, and the CLS row: logits l0 (n_pad; kept for the scores), its output row
// (out_row0, D elements of T) and log-sum-exp (*lse0). ktmp: N × d_pad, q0: d_pad, srow: n_pad, o0: d_pad.
template <typename T>
FASTFER_ISA_ATTR void prepare_head(const TokenPoolArgs& s, const T* head, const Dims& g, float* kt, float* v, float* l0,
                                   float* lse0, T* out_row0, float* ktmp, float* q0, float* srow, float* o0) {
  load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, ktmp, g.d_pad, g.N);
  transpose(ktmp, g.N, g.D, g.d_pad, kt, g.n_pad);
  load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, v, g.d_pad, g.N);
  load_rows(head, s.stride_n, s.stride_d, nullptr, 1, g.D, s.scale, q0, g.d_pad, 1);
  rows_a_bt<1>(q0, g.d_pad, kt, g.n_pad, g.D, g.n_pad, l0, g.n_pad);
  std::memcpy(srow, l0, g.n_pad * sizeof(float));
  float row_max, row_sum;
  softmax_row(srow, g.N, g.n_pad, &row_max, &row_sum);
  rows_p_v<1>(srow, g.n_pad, v, g.d_pad, g.N, g.d_pad, o0, g.d_pad);
  convert_out(o0, g.D, 1.0f / row_sum, out_row0);
  *lse0 = row_max + std::log(row_sum);
}

// Phase 3 of the forward: `count` query rows (positions rows[0..count)) of one head against its prepared
// kt and v; writes their output rows (out, row stride out_stride) and lse. q: round_up(count, 8) × d_pad,
// s: 8 × n_pad, o: 8 × d_pad thread scratch. Rows go in groups of 8 whose logits stay in L1 from the
// product through the softmax to P·V.
template <typename T>
FASTFER_ISA_ATTR void attend_rows(const TokenPoolArgs& s, const T* head, const Dims& g, const float* kt,
                                  const float* v, const int64_t* rows, int64_t count, T* out, int64_t out_stride,
                                  float* lse, float* q, float* sc, float* o) {
  constexpr int kGroup = 8;
  const int64_t total = round_up(count, kGroup);
  load_rows(head, s.stride_n, s.stride_d, rows, count, g.D, s.scale, q, g.d_pad, total);
  for (int64_t g0 = 0; g0 < total; g0 += kGroup) {
    for (int r0 = 0; r0 < kGroup; r0 += kR)
      rows_a_bt<kR>(q + (g0 + r0) * g.d_pad, g.d_pad, kt, g.n_pad, g.D, g.n_pad, sc + r0 * g.n_pad, g.n_pad);
    float row_max[kGroup], row_sum[kGroup];
    for (int r = 0; r < kGroup; ++r) softmax_row(sc + r * g.n_pad, g.N, g.n_pad, &row_max[r], &row_sum[r]);
    for (int r0 = 0; r0 < kGroup; r0 += kR)
      rows_p_v<kR>(sc + r0 * g.n_pad, g.n_pad, v, g.d_pad, g.N, g.d_pad, o + r0 * g.d_pad, g.d_pad);
    for (int r = 0; r < kGroup && g0 + r < count; ++r) {
      convert_out(o + r * g.d_pad, g.D, 1.0f / row_sum[r], out + (g0 + r) * out_stride);
      lse[g0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------------

// Shared fp32 scratch of one head in the backward (offsets into one buffer; all multiples of 16 floats).
struct GradHead {
  float *qs, *d_o, *lse, *delta, *k, *kt, *vt, *p, *ds;
};

inline int64_t grad_head_floats(const Dims& g) {
  const int64_t m8 = round_up(g.M, 8);
  return 2 * m8 * g.d_pad + 2 * round_up(m8, kLanes) + g.N * g.d_pad + 2 * g.D * g.n_pad + 2 * m8 * g.n_pad;
}

inline GradHead grad_head_at(float* base, const Dims& g) {
  const int64_t m8 = round_up(g.M, 8);
  GradHead t;
  t.qs = base;
  t.d_o = t.qs + m8 * g.d_pad;
  t.lse = t.d_o + m8 * g.d_pad;
  t.delta = t.lse + round_up(m8, kLanes);
  t.k = t.delta + round_up(m8, kLanes);
  t.kt = t.k + g.N * g.d_pad;
  t.vt = t.kt + g.D * g.n_pad;
  t.p = t.vt + g.D * g.n_pad;
  t.ds = t.p + m8 * g.n_pad;
  return t;
}

// Phase 1 of the backward for one (image, head): scaled Q rows, dO, δ = rowsum(dO ∘ O), lse (padding rows
// +inf: their P, and every contribution, is 0), K, Kᵀ, Vᵀ; and zero dq of every token (phase 2 then writes
// the kept rows). vtmp: N × d_pad, orow: d_pad thread scratch.
template <typename T>
FASTFER_ISA_ATTR void prepare_grad_head(const TokenPoolArgs& s, const T* head, const int64_t* rows, const T* grad_out,
                                        const T* out, const float* lse_in, int64_t HD, const Dims& g,
                                        const GradHead& t, T* dq_slot0, int64_t token_stride, float* vtmp,
                                        float* orow) {
  const int64_t m8 = round_up(g.M, 8);
  load_rows(head, s.stride_n, s.stride_d, rows, g.M, g.D, s.scale, t.qs, g.d_pad, m8);
  load_rows(grad_out, HD, 1, nullptr, g.M, g.D, 1.0f, t.d_o, g.d_pad, m8);
  for (int64_t i = 0; i < m8; ++i) {
    float acc = 0.0f;
    if (i < g.M) {
      convert_in(out + i * HD, g.D, 1.0f, orow);
      const float* d_o = t.d_o + i * g.d_pad;
      for (int64_t d = 0; d < g.D; ++d) acc += d_o[d] * orow[d];
    }
    t.delta[i] = acc;
    t.lse[i] = i < g.M ? lse_in[i] : kInf;
  }
  load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, t.k, g.d_pad, g.N);
  transpose(t.k, g.N, g.D, g.d_pad, t.kt, g.n_pad);
  load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, vtmp, g.d_pad, g.N);
  transpose(vtmp, g.N, g.D, g.d_pad, t.vt, g.n_pad);
  for (int64_t j = 0; j < g.N; ++j) std::fill(dq_slot0 + j * token_stride, dq_slot0 + j * token_stride + g.D, T(0.0f));
}

// Phase 2: query rows [r0, r1) of the padded rows (multiples of 8): P = exp(S − lse) and
// dS = P ∘ (dO Vᵀ − δ) into the head's scratch, and dq = scale · dS K for the real rows among them, written
// to dq_slot0 + positions[i]·token_stride. dq: 8 × d_pad thread scratch.
template <typename T>
FASTFER_ISA_ATTR void grad_rows(const Dims& g, const GradHead& t, int64_t r0, int64_t r1, float scale,
                                const int64_t* positions, T* dq_slot0, int64_t token_stride, float* dq) {
  constexpr int kGroup = 8;
  for (int64_t g0 = r0; g0 < r1; g0 += kGroup) {
    float* p = t.p + g0 * g.n_pad;
    float* ds = t.ds + g0 * g.n_pad;
    for (int rr = 0; rr < kGroup; rr += kR) {
      rows_a_bt<kR>(t.qs + (g0 + rr) * g.d_pad, g.d_pad, t.kt, g.n_pad, g.D, g.n_pad, p + rr * g.n_pad, g.n_pad);
      rows_a_bt<kR>(t.d_o + (g0 + rr) * g.d_pad, g.d_pad, t.vt, g.n_pad, g.D, g.n_pad, ds + rr * g.n_pad, g.n_pad);
    }
    for (int r = 0; r < kGroup; ++r) {
      float* p_row = p + r * g.n_pad;
      float* ds_row = ds + r * g.n_pad;
      const float row_lse = t.lse[g0 + r], row_delta = t.delta[g0 + r];
      for (int64_t j = 0; j < g.n_pad; j += kLanes) {
        const vf16 pj = vexp(FASTFER_VLOAD(p_row + j) - row_lse);
        FASTFER_VSTORE(p_row + j, pj);
        FASTFER_VSTORE(ds_row + j, pj * (FASTFER_VLOAD(ds_row + j) - row_delta));
      }
      for (int64_t j = g.N; j < g.n_pad; ++j) p_row[j] = ds_row[j] = 0.0f;  // padding keys
    }
    for (int rr = 0; rr < kGroup; rr += kR)
      rows_p_v<kR>(ds + rr * g.n_pad, g.n_pad, t.k, g.d_pad, g.N, g.d_pad, dq + rr * g.d_pad, g.d_pad);
    for (int r = 0; r < kGroup && g0 + r < g.M; ++r)
      convert_out(dq + r * g.d_pad, g.D, scale, dq_slot0 + positions[g0 + r] * token_stride);
  }
}

// Phase 3: keys [j0, j1) (multiples of 8): dV = Pᵀ dO and dK = dSᵀ (scale·Q) summed over all padded query
// rows in order, written to the v and k slots of tokens j < N. acc: (j1 − j0) × d_pad thread scratch.
template <typename T>
FASTFER_ISA_ATTR void grad_keys(const Dims& g, const GradHead& t, int64_t j0, int64_t j1, T* dk_slot0, T* dv_slot0,
                                int64_t token_stride, float* acc) {
  const int64_t m8 = round_up(g.M, 8);
  for (int pass = 0; pass < 2; ++pass) {
    const float* w = pass == 0 ? t.p : t.ds;
    const float* x = pass == 0 ? t.d_o : t.qs;
    T* dst = pass == 0 ? dv_slot0 : dk_slot0;
    for (int64_t j = j0; j < j1; j += kR)
      keys_pt_x<kR>(w + j, g.n_pad, x, g.d_pad, m8, g.d_pad, acc + (j - j0) * g.d_pad, g.d_pad);
    for (int64_t j = j0; j < j1 && j < g.N; ++j)
      convert_out(acc + (j - j0) * g.d_pad, g.D, 1.0f, dst + j * token_stride);
  }
}
