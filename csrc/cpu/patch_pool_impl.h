// Score loops of patch_pool.cpp, one instruction-set variant (isa.h): no include guard; patch_pool.cpp
// includes this file once per variant inside namespace fastfer::cpu::<variant> with FASTFER_ISA_ATTR and
// FASTFER_ISA_LEVEL set.

#include "vec_impl.h"

// Scores of one image when positions are the contiguous dimension (NCHW): scores[n] over channel rows.
template <int kScore, typename T>
FASTFER_ISA_ATTR void scores_position_major(const T* x, int64_t N, int64_t C, int64_t stride_n,
                                              int64_t stride_c, float* scores) {
  for (int64_t n = 0; n < N; ++n) scores[n] = score_init<kScore>();
  for (int64_t c = 0; c < C; ++c) {
    const T* row = x + c * stride_c;
    if (stride_n == 1) {
      for (int64_t n = 0; n < N; ++n) scores[n] = score_combine<kScore>(scores[n], score_term<kScore>(to_float(row[n])));
    } else {
      for (int64_t n = 0; n < N; ++n)
        scores[n] = score_combine<kScore>(scores[n], score_term<kScore>(to_float(row[n * stride_n])));
    }
  }
}

// Scores of one image when channels are the contiguous dimension (channels_last, tokens).
template <int kScore, typename T>
FASTFER_ISA_ATTR void scores_channel_major(const T* x, int64_t N, int64_t C, int64_t stride_n,
                                             int64_t stride_c, float* scores) {
  constexpr int kLanes = 16;
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * stride_n;
    float lanes[kLanes];
    for (int l = 0; l < kLanes; ++l) lanes[l] = score_init<kScore>();
    int64_t c = 0;
    if (stride_c == 1) {
      for (; c + kLanes <= C; c += kLanes)
        for (int l = 0; l < kLanes; ++l) lanes[l] = score_combine<kScore>(lanes[l], score_term<kScore>(to_float(p[c + l])));
    }
    float acc = lanes_combine<kScore>(lanes, kLanes);
    for (; c < C; ++c) acc = score_combine<kScore>(acc, score_term<kScore>(to_float(p[c * stride_c])));
    scores[n] = acc;
  }
}

// kW elements of T at p as fp32 / back (exact both ways for fp16 and bf16 values).
template <typename T>
FASTFER_ISA_ATTR inline __attribute__((always_inline)) vn loadn(const T* p) {
  if constexpr (std::is_same<T, float>::value) {
    return vload(p);
  } else {
    float tmp[kW];
    convert_in(p, kW, 1.0f, tmp);
    return vload(tmp);
  }
}

template <typename T>
FASTFER_ISA_ATTR inline __attribute__((always_inline)) void storen(T* p, vn v) {
  if constexpr (std::is_same<T, float>::value) {
    vstore(p, v);
  } else {
    float tmp[kW];
    vstore(tmp, v);
    convert_out(tmp, kW, 1.0f, p);
  }
}

// grad_x of one image with positions contiguous (NCHW): xb[c·stride_c + n] = gb[slot[n]][c], or 0 where
// slot[n] < 0. A per-channel loop reads gb with a stride of C elements per position (one cache line per
// element); kW × kW blocks transposed in registers read whole rows instead.
template <typename T>
FASTFER_ISA_ATTR void scatter_position_major(const T* gb, const int32_t* slot, int64_t N, int64_t C, int64_t stride_c,
                                             T* xb) {
  const int64_t nw = N / kW * kW, cw = C / kW * kW;
  for (int64_t n0 = 0; n0 < nw; n0 += kW) {
    for (int64_t c0 = 0; c0 < cw; c0 += kW) {
      vn m[kW];
#pragma GCC unroll 16
      for (int i = 0; i < kW; ++i) m[i] = slot[n0 + i] < 0 ? vn{} : loadn(gb + slot[n0 + i] * C + c0);
      transpose_block(m);
#pragma GCC unroll 16
      for (int j = 0; j < kW; ++j) storen(xb + (c0 + j) * stride_c + n0, m[j]);
    }
    for (int64_t c = cw; c < C; ++c)
      for (int64_t n = n0; n < n0 + kW; ++n) xb[c * stride_c + n] = slot[n] < 0 ? T(0.0f) : gb[slot[n] * C + c];
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = nw; n < N; ++n) xb[c * stride_c + n] = slot[n] < 0 ? T(0.0f) : gb[slot[n] * C + c];
}

// tokens (k × C) of one image with positions contiguous (NCHW): tokens[t][c] = x[c][index[t]] (+ pos, added
// in fp32 and rounded once). The map is first transposed to token-major fp32 (tmp: N × C) in kW × kW
// register blocks — reading a channel-strided column per token touched one cache line per element.
template <typename T>
FASTFER_ISA_ATTR void gather_position_major(const T* x, int64_t N, int64_t C, int64_t stride_c, const int64_t* index,
                                            int64_t k, const float* pos, T* tokens, float* tmp) {
  const int64_t nw = N / kW * kW, cw = C / kW * kW;
  for (int64_t n0 = 0; n0 < nw; n0 += kW) {
    for (int64_t c0 = 0; c0 < cw; c0 += kW) {
      vn m[kW];
#pragma GCC unroll 16
      for (int j = 0; j < kW; ++j) m[j] = loadn(x + (c0 + j) * stride_c + n0);
      transpose_block(m);
#pragma GCC unroll 16
      for (int i = 0; i < kW; ++i) vstore(tmp + (n0 + i) * C + c0, m[i]);
    }
    for (int64_t c = cw; c < C; ++c)
      for (int64_t n = n0; n < n0 + kW; ++n) tmp[n * C + c] = static_cast<float>(x[c * stride_c + n]);
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = nw; n < N; ++n) tmp[n * C + c] = static_cast<float>(x[c * stride_c + n]);
  for (int64_t t = 0; t < k; ++t) {
    float* row = tmp + index[t] * C;
    if (pos != nullptr) {
      const float* p = pos + index[t] * C;
      for (int64_t c = 0; c < C; ++c) row[c] += p[c];  // each kept position appears once: in place is safe
    }
    convert_out(row, C, 1.0f, tokens + t * C);
  }
}
