// Score loops of patch_pool.cpp, one instruction-set variant (isa.h): no include guard; patch_pool.cpp
// includes this file once per variant inside namespace fastfer::cpu::<variant> with FASTFER_ISA_ATTR set.

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
