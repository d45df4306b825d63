// The forward of token-pool attention for bf16 inputs on AMX-BF16 tiles, for the amx variant only: no
// include guard; attention_impl.h includes it inside that variant's namespace after Dims. Same algorithm
// as the fp32 path of attention_impl.h (see attention.cpp); what differs is the arithmetic of the products:
//
//   S = Q Kᵀ: tdpbf16ps multiplies a 16-row block of query rows by 16 keys over 32 head-dim elements,
//     q and k as they are in memory (exact bf16 products, fp32 sums): no bf16 → fp32 conversion of K, Q or
//     V, and 512 multiply-adds per tile instruction; the scale is applied to the fp32 sums (q·scale is not
//     rounded to bf16);
//   O = P V: the fp32 softmax numerators are rounded to bf16 (as PyTorch's bf16 attention rounds its
//     probabilities) and multiplied with V in tiles of 32 keys; the max, the sum and the final 1/sum stay
//     fp32. The CLS row (one row: a tile would waste 15 of 16) uses AVX512-BF16 vdpbf16ps instead.
//
// Why not vdpbf16ps everywhere: measured on a Sapphire Rapids core it is no faster than two fp32 FMA ports
// (the whole bf16 forward 9.8 ms vs 7.8 ms for the fp32 path at APViT's shapes), while SDPA's bf16 path
// (oneDNN on AMX) took 3.6 ms.
//
// Layouts (uint32 words = two bf16, the lower half the even element), which are also AMX's: A tiles are
// rows of words, B tiles are "VNNI" rows of word pairs:
//   q rows:  round_up(count, 16) × kp words, word p = (q[2p], q[2p+1]) — a bf16 row copied as it is;
//   kt2:     kp × n_pad words, kt2[p][j] = (k[j][2p], k[j][2p+1]) — the word transpose of the K rows;
//   v2:      value_pairs × d_pad words, v2[i][d] = (v[2i][d], v[2i+1][d]) — key rows interleaved in pairs;
//   p rows:  value_pairs words, word i = (p[2i], p[2i+1]) — a bf16 row in order.
// kp = round_up(ceil(D/2), 16) (whole tiles; the K words transpose in 16 × 16 blocks). Padding (pairs
// beyond D, keys beyond N) is zero: a NaN there would reach the sums through 0 · NaN.

// Words per q / k row.
inline int64_t pair_words(const Dims& g) { return round_up(ceil_div(g.D, 2), kLanes); }

// dst[i][0..ld) words = bf16 row positions[i] (or i) of src with its D elements, zero-padded; rows
// count..total zero.
FASTFER_VI void load_pair_rows(const uint16_t* src, int64_t stride_n, int64_t stride_d, const int64_t* positions,
                               int64_t count, int64_t D, uint32_t* dst, int64_t ld, int64_t total) {
  for (int64_t i = 0; i < total; ++i) {
    uint16_t* row = reinterpret_cast<uint16_t*>(dst + i * ld);
    int64_t d = 0;
    if (i < count) {
      const uint16_t* s = src + (positions ? positions[i] : i) * stride_n;
      if (stride_d == 1) {
        std::memcpy(row, s, D * sizeof(uint16_t));
        d = D;
      } else {
        for (; d < D; ++d) row[d] = s[d * stride_d];
      }
    }
    for (; d < 2 * ld; ++d) row[d] = 0;
  }
}

// v2 (value_pairs × d_pad words) from the N bf16 V rows: word (i, d) = v[2i][d] | v[2i+1][d] << 16.
FASTFER_VI void load_value_pairs(const uint16_t* src, int64_t stride_n, int64_t stride_d, const Dims& g,
                                 uint32_t* v2) {
  for (int64_t i = 0; i < value_pairs(g); ++i) {
    const uint16_t* even = 2 * i < g.N ? src + 2 * i * stride_n : nullptr;
    const uint16_t* odd = 2 * i + 1 < g.N ? src + (2 * i + 1) * stride_n : nullptr;
    uint32_t* row = v2 + i * g.d_pad;
    int64_t d = 0;
    if (stride_d == 1) {
      for (; d + kLanes <= g.D; d += kLanes) {
        const __m512i lo = even ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + d)))
                                : _mm512_setzero_si512();
        const __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd + d)))
                               : _mm512_setzero_si512();
        _mm512_storeu_si512(row + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
    for (; d < g.d_pad; ++d) {
      const uint32_t lo = even && d < g.D ? even[d * stride_d] : 0, hi = odd && d < g.D ? odd[d * stride_d] : 0;
      row[d] = lo | hi << 16;
    }
  }
}

// s[r][0..16·CV) = mul · Σ_p a[r][p] ⋅ b[p][0..16·CV) for r < R, where ⋅ is the two-element bf16 dot of
// one word pair (vdpbf16ps). S = Q Kᵀ (a = q words, b = kt2) and O = P V (a = p words, b = v2).
template <int R, int CV>
FASTFER_VI void tile_pair_dot(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t depth, float mul,
                              float* s, int64_t lds) {
  __m512 acc[R][CV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < depth; ++p) {
    __m512bh w[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) w[c] = (__m512bh)_mm512_loadu_si512(b + p * ldb + c * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, w[c]);
    }
  }
  const __m512 m = _mm512_set1_ps(mul);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) _mm512_storeu_ps(s + r * lds + c * kLanes, _mm512_mul_ps(acc[r][c], m));
}

// tile_pair_dot over all columns (cols a multiple of 16): 48-wide tiles, then 32 and 16.
template <int R>
FASTFER_VI void rows_pair_dot(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t depth,
                              int64_t cols, float mul, float* s, int64_t lds) {
  int64_t c = 0;
  for (; c + 3 * kLanes <= cols; c += 3 * kLanes) tile_pair_dot<R, 3>(a, lda, b + c, ldb, depth, mul, s + c, lds);
  for (; c + 2 * kLanes <= cols; c += 2 * kLanes) tile_pair_dot<R, 2>(a, lda, b + c, ldb, depth, mul, s + c, lds);
  if (c < cols) tile_pair_dot<R, 1>(a, lda, b + c, ldb, depth, mul, s + c, lds);
}

// exp(x) for softmax arguments x = y − max ≤ 0 (or NaN): Cody–Waite reduction to r in [−ln2/2, ln2/2],
// a degree-5 Taylor polynomial (relative error < 3e-6, far below bf16's 2⁻⁹ to which P is rounded) and
// vscalefps for p·2ⁿ. x < −87 (−inf included) gives 0 by a mask, not by letting the result underflow:
// a denormal result costs a microcode assist (measured: it made the whole softmax several times slower).
// NaN passes the clamp (vmaxps returns its second operand when one is NaN) and the mask, and stays NaN.
FASTFER_VI __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // x ≥ −87 or NaN
  x = _mm512_max_ps(lo, x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(1.0f / 120.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Softmax numerators of one row of unscaled logits in two passes over L1, straight into bf16 words:
// words[0..pairs) = bf16(exp(scale·row[j] − m)) for j < valid and 0 beyond, with m = max_j scale·row[j]
// (NaN ignored, as softmax_row does; an all −inf row subtracts 0 and gives 0). Returns m (*max_out) and the
// fp32 sum of the unrounded exponentials (*sum_out). padded: a multiple of 16 ≥ valid; pairs ≥ padded / 2.
FASTFER_VI void softmax_row_bf16(const float* row, int64_t valid, int64_t padded, float scale, int64_t pairs,
                                 uint32_t* words, float* max_out, float* sum_out) {
  const __m512 neg_inf = _mm512_set1_ps(-kInf), sc = _mm512_set1_ps(scale);
  const auto lanes = [&](int64_t j) -> __mmask16 {
    return j + kLanes <= valid ? __mmask16(0xFFFF) : __mmask16(valid > j ? (1u << (valid - j)) - 1 : 0);
  };
  __m512 m = neg_inf;
  for (int64_t j = 0; j < padded; j += kLanes) {
    const __m512 y = _mm512_mul_ps(_mm512_mask_loadu_ps(neg_inf, lanes(j), row + j), sc);
    m = _mm512_max_ps(y, m);  // NaN lanes of y: m (the second operand) is kept
  }
  const float row_max = _mm512_reduce_max_ps(m);
  const __m512 base = _mm512_set1_ps(row_max == -kInf ? 0.0f : row_max);
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < padded; j += kLanes) {
    const __m512 x = _mm512_mask_loadu_ps(neg_inf, lanes(j), row + j);
    const __m512 e = exp_nonpositive(_mm512_fmsub_ps(x, sc, base));
    total = _mm512_add_ps(total, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + j / 2), (__m256i)_mm512_cvtneps_pbh(e));
  }
  for (int64_t i = padded / 2; i < pairs; ++i) words[i] = 0;
  *max_out = row_max;
  *sum_out = _mm512_reduce_add_ps(total);
}

// ---- AMX tiles ----------------------------------------------------------------------------------------

// Tile configuration (palette 1): tiles 0–4 all 16 rows × 64 bytes — 0, 1 accumulate fp32 C blocks
// (16 × 16), 2 holds an A block (16 rows × 16 words), 3, 4 hold B blocks (16 word rows × 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loads the configuration. Other code (oneDNN) configures the tiles its own way between our calls, so
// every task loads it before its first tile instruction and releases the tiles after its last.
FASTFER_VI void tiles_configure() {
  TileConfig config;
  for (int t = 0; t < 5; ++t) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

// s[0..16)[0..cols) = Σ_p a[r][p] ⋅ b[p][0..cols) over 16 rows with AMX (configured): a 16 rows ×
// depth words (row stride lda), b depth × cols words (row stride ldb); depth and cols multiples of 16.
FASTFER_VI void tile_rows_dot(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t depth,
                              int64_t cols, float* s, int64_t lds) {
  // GCC's tile intrinsics are asm statements that do not declare the memory they read and write: the
  // fences keep the stores to a and b before the tile loads and the reads of s after the tile stores.
  asm volatile("" ::: "memory");
  int64_t c = 0;
  for (; c + 2 * kLanes <= cols; c += 2 * kLanes) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t p = 0; p < depth; p += kLanes) {
      _tile_loadd(2, a + p, lda * 4);
      _tile_loadd(3, b + p * ldb + c, ldb * 4);
      _tile_loadd(4, b + p * ldb + c + kLanes, ldb * 4);
      _tile_dpbf16ps(0, 2, 3);
      _tile_dpbf16ps(1, 2, 4);
    }
    _tile_stored(0, s + c, lds * 4);
    _tile_stored(1, s + c + kLanes, lds * 4);
  }
  if (c < cols) {
    _tile_zero(0);
    for (int64_t p = 0; p < depth; p += kLanes) {
      _tile_loadd(2, a + p, lda * 4);
      _tile_loadd(3, b + p * ldb + c, ldb * 4);
      _tile_dpbf16ps(0, 2, 3);
    }
    _tile_stored(0, s + c, lds * 4);
  }
  asm volatile("" ::: "memory");
}

// Phase 1 for bf16 (prepare_head's contract): kt2 and v2 into the head's shared scratch (kt, v reused as
// words), the CLS row's logits l0, output row 0 and lse. ktmp, q0, o0 as there; srow holds the row's P in
// bf16 (value_pairs words; the softmax reads l0 in place).
template <typename T>
FASTFER_ISA_ATTR void prepare_head_bf16(const TokenPoolArgs& s, const T* head, const Dims& g, float* kt, float* v,
                                        float* l0, float* lse0, T* out_row0, float* ktmp, float* q0, float* srow,
                                        float* o0) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(head);
  const int64_t kp = pair_words(g), pairs = value_pairs(g);
  uint32_t* const kt2 = reinterpret_cast<uint32_t*>(kt);
  uint32_t* const v2 = reinterpret_cast<uint32_t*>(v);
  uint32_t* const words = reinterpret_cast<uint32_t*>(ktmp);
  uint32_t* const q2 = reinterpret_cast<uint32_t*>(q0);
  uint32_t* const p2 = reinterpret_cast<uint32_t*>(srow);
  load_pair_rows(bits + s.stride_3, s.stride_n, s.stride_d, nullptr, g.N, g.D, words, kp, g.N);
  // A transpose of 32-bit words: the float vectors only move bit patterns (no arithmetic on them).
  transpose(reinterpret_cast<const float*>(words), g.N, g.n_pad, kp, kp, kt, g.n_pad);
  load_value_pairs(bits + 2 * s.stride_3, s.stride_n, s.stride_d, g, v2);
  load_pair_rows(bits, s.stride_n, s.stride_d, nullptr, 1, g.D, q2, kp, 1);
  rows_pair_dot<1>(q2, kp, kt2, g.n_pad, kp, g.n_pad, s.scale, l0, g.n_pad);  // scaled: also the scores' input
  float row_max, row_sum;
  softmax_row_bf16(l0, g.N, g.n_pad, 1.0f, pairs, p2, &row_max, &row_sum);
  rows_pair_dot<1>(p2, pairs, v2, g.d_pad, g.n_pad / 2, g.d_pad, 1.0f, o0, g.d_pad);
  convert_out(o0, g.D, 1.0f / row_sum, out_row0);
  *lse0 = row_max + std::log(row_sum);
}

// Phase 3 for bf16 (attend_rows' contract) on AMX tiles, in groups of 16 query rows; sc holds 16 × n_pad
// logits, then 16 × value_pairs words of P; q round_up(count, 16) × kp words; o 16 × d_pad.
template <typename T>
FASTFER_ISA_ATTR void attend_rows_bf16(const TokenPoolArgs& s, const T* head, const Dims& g, const float* kt,
                                       const float* v, const int64_t* rows, int64_t count, T* out, int64_t out_stride,
                                       float* lse, float* q, float* sc, float* o) {
  constexpr int kGroup = 16;
  const int64_t kp = pair_words(g), pairs = value_pairs(g), total = round_up(count, kGroup);
  const uint32_t* const kt2 = reinterpret_cast<const uint32_t*>(kt);
  const uint32_t* const v2 = reinterpret_cast<const uint32_t*>(v);
  uint32_t* const q2 = reinterpret_cast<uint32_t*>(q);
  uint32_t* const p2 = reinterpret_cast<uint32_t*>(sc + kGroup * g.n_pad);
  load_pair_rows(reinterpret_cast<const uint16_t*>(head), s.stride_n, s.stride_d, rows, count, g.D, q2, kp, total);
  tiles_configure();
  for (int64_t g0 = 0; g0 < total; g0 += kGroup) {
    tile_rows_dot(q2 + g0 * kp, kp, kt2, g.n_pad, kp, g.n_pad, sc, g.n_pad);
    float row_max[kGroup], row_sum[kGroup];
    for (int r = 0; r < kGroup; ++r)
      softmax_row_bf16(sc + r * g.n_pad, g.N, g.n_pad, s.scale, pairs, p2 + r * pairs, &row_max[r], &row_sum[r]);
    tile_rows_dot(p2, pairs, v2, g.d_pad, pairs, g.d_pad, o, g.d_pad);
    for (int r = 0; r < kGroup && g0 + r < count; ++r) {
      convert_out(o + r * g.d_pad, g.D, 1.0f / row_sum[r], out + (g0 + r) * out_stride);
      lse[g0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  }
  _tile_release();
}
