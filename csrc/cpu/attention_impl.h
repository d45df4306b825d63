// Token-pool attention on CPU, one instruction-set variant (isa.h): no include guard; attention.cpp includes
// this file once per variant inside namespace fastfer::cpu::<variant> with FASTFER_ISA_ATTR,
// FASTFER_ISA_LEVEL and FASTFER_ISA_ROWS (rows of a register tile: 8 with 32 zmm registers, fewer with 16)
// and FASTFER_ISA_AMX (1: bf16 inputs of the forward take the AMX tile path of amx_impl.h)
// defined. See attention.cpp for the algorithm.

#include "vec_impl.h"

// True when this variant's forward multiplies T inputs as bf16 pairs (no conversion to fp32 scratch).
template <typename T>
constexpr bool bf16_dots() {
  return FASTFER_ISA_AMX && std::is_same<T, c10::BFloat16>::value;
}

constexpr int kR = FASTFER_ISA_ROWS;

// Sizes of one head; *_pad are the zero-padded scratch extents (multiples of 16 lanes).
struct Dims {
  int64_t N, M, D, n_pad, d_pad;
};

inline Dims dims_of(const TokenPoolArgs& s) {
  return Dims{s.N, s.M, s.D, round_up(s.N, kLanes), round_up(s.D, kLanes)};
}

// Key pairs of the bf16 V layout of amx_impl.h: n_pad/2 rounded up to whole 16-row AMX tiles.
inline int64_t value_pairs(const Dims& g) { return round_up(g.n_pad / 2, kLanes); }

// Floats of a head's shared V scratch: fp32 rows (N × d_pad) or bf16 key pairs (value_pairs × d_pad words).
inline int64_t v_floats(const Dims& g) { return std::max(g.N, value_pairs(g)) * g.d_pad; }

#if FASTFER_ISA_AMX
#include "amx_impl.h"
#endif

// ---- forward ------------------------------------------------------------------------------------------

// fp32 V rows with a contiguous head dimension that fills whole vectors are read in place from qkv (the
// P·V tiles take a row stride); anything else is converted into scratch first.
template <typename T>
inline bool v_in_place(const TokenPoolArgs& s, const Dims& g) {
  return std::is_same<T, float>::value && s.stride_d == 1 && g.D == g.d_pad;
}

// Phase 1 of the forward for one (image, head): K (transposed: kt, d_pad × n_pad) and V (v, N × d_pad) into
// the head's shared fp32 scratch, and the CLS row: logits l0 (n_pad; kept for the scores), its output row
// (out_row0, D elements of T) and log-sum-exp (*lse0). ktmp: N × d_pad, q0: d_pad, srow: n_pad, o0: d_pad.
// v: the scratch, or (v_in_place) V's rows in qkv with row stride ldv, left as they are.
template <typename T>
FASTFER_ISA_ATTR void prepare_head(const TokenPoolArgs& s, const T* head, const Dims& g, float* kt, const float* v,
                                   int64_t ldv, float* l0, float* lse0, T* out_row0, float* ktmp, float* q0,
                                   float* srow, float* o0) {
#if FASTFER_ISA_AMX
  if constexpr (bf16_dots<T>()) {
    return prepare_head_bf16(s, head, g, kt, const_cast<float*>(v), l0, lse0, out_row0, ktmp, q0, srow, o0);
  }
#endif
  load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, ktmp, g.d_pad, g.N);
  transpose(ktmp, g.N, g.n_pad, g.d_pad, g.d_pad, kt, g.n_pad);
  if (!v_in_place<T>(s, g))
    load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, const_cast<float*>(v), g.d_pad,
              g.N);
  load_rows(head, s.stride_n, s.stride_d, nullptr, 1, g.D, s.scale, q0, g.d_pad, 1);
  rows_a_bt<1>(q0, g.d_pad, kt, g.n_pad, g.D, g.n_pad, l0, g.n_pad);
  std::memcpy(srow, l0, g.n_pad * sizeof(float));
  float row_max, row_sum;
  softmax_row(srow, g.N, g.n_pad, &row_max, &row_sum);
  rows_p_v<1>(srow, g.n_pad, v, ldv, g.N, g.d_pad, o0, g.d_pad);
  convert_out(o0, g.D, 1.0f / row_sum, out_row0);
  *lse0 = row_max + std::log(row_sum);
}

// Phase 3 of the forward: `count` query rows (positions rows[0..count)) of one head against its prepared
// kt and v; writes their output rows (out, row stride out_stride) and lse. q: round_up(count, 8) × d_pad,
// s: 8 × n_pad, o: 8 × d_pad thread scratch. Rows go in groups of 8 whose logits stay in L1 from the
// product through the softmax to P·V.
template <typename T>
FASTFER_ISA_ATTR void attend_rows(const TokenPoolArgs& s, const T* head, const Dims& g, const float* kt,
                                  const float* v, int64_t ldv, const int64_t* rows, int64_t count, T* out, int64_t out_stride,
                                  float* lse, float* q, float* sc, float* o) {
#if FASTFER_ISA_AMX
  if constexpr (bf16_dots<T>()) return attend_rows_bf16(s, head, g, kt, v, rows, count, out, out_stride, lse, q, sc, o);
#endif
  constexpr int kGroup = 8;
  const int64_t total = round_up(count, kGroup);
  load_rows(head, s.stride_n, s.stride_d, rows, count, g.D, s.scale, q, g.d_pad, total);
  for (int64_t g0 = 0; g0 < total; g0 += kGroup) {
    for (int r0 = 0; r0 < kGroup; r0 += kR)
      rows_a_bt<kR>(q + (g0 + r0) * g.d_pad, g.d_pad, kt, g.n_pad, g.D, g.n_pad, sc + r0 * g.n_pad, g.n_pad);
    float row_max[kGroup], row_sum[kGroup];
    for (int r = 0; r < kGroup; ++r) softmax_row(sc + r * g.n_pad, g.N, g.n_pad, &row_max[r], &row_sum[r]);
    for (int r0 = 0; r0 < kGroup; r0 += kR)
      rows_p_v<kR>(sc + r0 * g.n_pad, g.n_pad, v, ldv, g.N, g.d_pad, o + r0 * g.d_pad, g.d_pad);
    for (int r = 0; r < kGroup && g0 + r < count; ++r) {
      convert_out(o + r * g.d_pad, g.D, 1.0f / row_sum[r], out + (g0 + r) * out_stride);
      lse[g0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------------

constexpr int64_t kChunkRows = 128;  // query rows whose P and dS are kept at once

// fp32 scratch of one (image, head) backward task (offsets into one buffer; all multiples of 16 floats).
struct GradHead {
  float *qs, *d_o, *lse, *delta, *k, *kt, *vt, *vtmp, *orow, *dq, *dk, *dv, *p, *ds;
};

inline int64_t grad_head_floats(const Dims& g) {
  const int64_t m8 = round_up(g.M, 8), n8 = round_up(g.N, 8), m16 = round_up(m8, kLanes);
  return 2 * m8 * g.d_pad + 2 * m16 + 2 * g.N * g.d_pad + 2 * g.d_pad * g.n_pad + 9 * g.d_pad + 2 * n8 * g.d_pad +
         2 * kChunkRows * g.n_pad;
}

inline GradHead grad_head_at(float* base, const Dims& g) {
  const int64_t m8 = round_up(g.M, 8), n8 = round_up(g.N, 8), m16 = round_up(m8, kLanes);
  GradHead t;
  t.qs = base;
  t.d_o = t.qs + m8 * g.d_pad;
  t.lse = t.d_o + m8 * g.d_pad;
  t.delta = t.lse + m16;
  t.k = t.delta + m16;
  t.kt = t.k + g.N * g.d_pad;
  t.vt = t.kt + g.d_pad * g.n_pad;
  t.vtmp = t.vt + g.d_pad * g.n_pad;
  t.orow = t.vtmp + g.N * g.d_pad;
  t.dq = t.orow + g.d_pad;
  t.dk = t.dq + 8 * g.d_pad;
  t.dv = t.dk + n8 * g.d_pad;
  t.p = t.dv + n8 * g.d_pad;
  t.ds = t.p + kChunkRows * g.n_pad;
  return t;
}

// Query rows [r0, r1) (multiples of 8) of the chunk starting at row c0: P = exp(S − lse) and
// dS = P ∘ (dO Vᵀ − δ) into the chunk buffers, and dq = scale · dS K for the real rows among them, written
// to dq_slot0 + positions[i]·token_stride.
template <typename T>
FASTFER_VI void grad_rows(const Dims& g, const GradHead& t, int64_t c0, int64_t r0, int64_t r1, float scale,
                          const int64_t* positions, T* dq_slot0, int64_t token_stride) {
  constexpr int kGroup = 8;
  for (int64_t g0 = r0; g0 < r1; g0 += kGroup) {
    float* p = t.p + (g0 - c0) * g.n_pad;
    float* ds = t.ds + (g0 - c0) * g.n_pad;
    for (int rr = 0; rr < kGroup; rr += kR) {
      rows_a_bt<kR>(t.qs + (g0 + rr) * g.d_pad, g.d_pad, t.kt, g.n_pad, g.D, g.n_pad, p + rr * g.n_pad, g.n_pad);
      rows_a_bt<kR>(t.d_o + (g0 + rr) * g.d_pad, g.d_pad, t.vt, g.n_pad, g.D, g.n_pad, ds + rr * g.n_pad, g.n_pad);
    }
    for (int r = 0; r < kGroup; ++r) {
      float* p_row = p + r * g.n_pad;
      float* ds_row = ds + r * g.n_pad;
      const float row_lse = t.lse[g0 + r], row_delta = t.delta[g0 + r];
      for (int64_t j = 0; j < g.n_pad; j += kW) {
        const vn pj = vexp(vload(p_row + j) - row_lse);
        vstore(p_row + j, pj);
        vstore(ds_row + j, pj * (vload(ds_row + j) - row_delta));
      }
      for (int64_t j = g.N; j < g.n_pad; ++j) p_row[j] = ds_row[j] = 0.0f;  // padding keys
    }
    for (int rr = 0; rr < kGroup; rr += kR)
      rows_p_v<kR>(ds + rr * g.n_pad, g.n_pad, t.k, g.d_pad, g.N, g.d_pad, t.dq + rr * g.d_pad, g.d_pad);
    for (int r = 0; r < kGroup && g0 + r < g.M; ++r)
      convert_out(t.dq + r * g.d_pad, g.D, scale, dq_slot0 + positions[g0 + r] * token_stride);
  }
}

// The backward of one (image, head): d(q, k, v) of the head written to slots (the q slot of token 0 of
// this image and head in the contiguous (B, N, 3, H, D) dqkv; k and v slots follow at +HD, +2·HD). Query
// rows go in chunks of kChunkRows: P and dS of a chunk are kept so that dK and dV accumulate over the whole
// chunk with their tiles in registers, in a fixed row order (no dependence on threads). scratch:
// grad_head_floats(g) floats.
template <typename T>
FASTFER_ISA_ATTR void grad_head(const TokenPoolArgs& s, const T* head, const int64_t* rows, const T* grad_out,
                                const T* out, const float* lse_in, int64_t HD, const Dims& g, T* slots,
                                float* scratch) {
  const GradHead t = grad_head_at(scratch, g);
  const int64_t m8 = round_up(g.M, 8), n8 = round_up(g.N, 8), token_stride = 3 * HD;
  load_rows(head, s.stride_n, s.stride_d, rows, g.M, g.D, s.scale, t.qs, g.d_pad, m8);
  load_rows(grad_out, HD, 1, nullptr, g.M, g.D, 1.0f, t.d_o, g.d_pad, m8);
  for (int64_t i = 0; i < m8; ++i) {  // δ = rowsum(dO ∘ O); padding rows get lse = +inf, hence P = 0
    float acc = 0.0f;
    if (i < g.M) {
      convert_in(out + i * HD, g.D, 1.0f, t.orow);
      const float* d_o = t.d_o + i * g.d_pad;
      for (int64_t d = 0; d < g.D; ++d) acc += d_o[d] * t.orow[d];
    }
    t.delta[i] = acc;
    t.lse[i] = i < g.M ? lse_in[i] : kInf;
  }
  load_rows(head + s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, t.k, g.d_pad, g.N);
  transpose(t.k, g.N, g.n_pad, g.d_pad, g.d_pad, t.kt, g.n_pad);
  load_rows(head + 2 * s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, 1.0f, t.vtmp, g.d_pad, g.N);
  transpose(t.vtmp, g.N, g.n_pad, g.d_pad, g.d_pad, t.vt, g.n_pad);
  std::fill(t.dk, t.dk + 2 * n8 * g.d_pad, 0.0f);  // dk, dv
  for (int64_t j = 0; j < g.N; ++j) std::fill(slots + j * token_stride, slots + j * token_stride + g.D, T(0.0f));
  for (int64_t c0 = 0; c0 < m8; c0 += kChunkRows) {
    const int64_t c1 = std::min(m8, c0 + kChunkRows);
    grad_rows(g, t, c0, c0, c1, s.scale, rows, slots, token_stride);
    for (int64_t j = 0; j < n8; j += kR) {
      keys_pt_x<kR>(t.p + j, g.n_pad, t.d_o + c0 * g.d_pad, g.d_pad, c1 - c0, g.d_pad, t.dv + j * g.d_pad, g.d_pad);
      keys_pt_x<kR>(t.ds + j, g.n_pad, t.qs + c0 * g.d_pad, g.d_pad, c1 - c0, g.d_pad, t.dk + j * g.d_pad, g.d_pad);
    }
  }
  for (int64_t j = 0; j < g.N; ++j) {
    convert_out(t.dk + j * g.d_pad, g.D, 1.0f, slots + j * token_stride + HD);
    convert_out(t.dv + j * g.d_pad, g.D, 1.0f, slots + j * token_stride + 2 * HD);
  }
}

#undef FASTFER_VI
