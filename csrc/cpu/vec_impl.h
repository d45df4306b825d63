// Vector building blocks of the CPU attention kernels, compiled once per instruction-set variant: this file
// has no include guard and is included by attention_impl.h inside namespace fastfer::cpu::<variant>, with
// FASTFER_ISA_ATTR (the variant's target attribute, empty for portable) and FASTFER_ISA_LEVEL (0 portable,
// 1 AVX2, 2 AVX-512) defined. Every function is force-inlined into the variant's callers.
//
// Conversions: bf16 → fp32 is a 16-bit shift and fp32 → bf16 a round-to-nearest-even on the bit pattern,
// both plain integer vector code; fp16 uses the F16C / AVX-512 conversion instructions where the variant
// has them and c10's software conversion in the portable variant. All of them round as torch's .to(dtype).
// Tiles: register-blocked fp32 products with compile-time shapes (R rows × CV native vectors of kW lanes), so the
// accumulators stay in registers; operands are fp32 scratch prepared by the caller (scaled, zero-padded).

#define FASTFER_VI FASTFER_ISA_ATTR inline __attribute__((always_inline))

// The variant's native vector: kW fp32 lanes in one register (zmm 16, ymm 8, xmm 4). The vector code below is
// written with it, not with one 16-lane type for all variants: GCC lowers a vector wider than the target's
// registers through the stack (each value stored, then reloaded piecewise), which made the AVX2 and portable
// attention 25× slower than the AVX-512 one. Scratch layouts still pad to kLanes = 16 (a multiple of kW).
#if FASTFER_ISA_LEVEL >= 2
constexpr int kW = 16;
#elif FASTFER_ISA_LEVEL == 1
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
typedef float vn __attribute__((vector_size(4 * kW), aligned(4), may_alias));
typedef int32_t vin __attribute__((vector_size(4 * kW), aligned(4), may_alias));

FASTFER_VI vn vload(const float* p) { return *reinterpret_cast<const vn*>(p); }
FASTFER_VI void vstore(float* p, vn v) { *reinterpret_cast<vn*>(p) = v; }

// ---- element conversion ---------------------------------------------------------------------------------

// dst[0..n) = mul · src[0..n) in fp32 (src contiguous).
template <typename T>
FASTFER_VI void convert_in(const T* src, int64_t n, float mul, float* dst) {
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value) {
    for (; i < n; ++i) dst[i] = mul * src[i];
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
    for (; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      dst[i] = mul * f;
    }
  } else {
#if FASTFER_ISA_LEVEL >= 2
    for (; i + 16 <= n; i += 16) {
      const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_mul_ps(f, _mm512_set1_ps(mul)));
    }
#elif FASTFER_ISA_LEVEL == 1
    for (; i + 8 <= n; i += 8) {
      const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(f, _mm256_set1_ps(mul)));
    }
#endif
    for (; i < n; ++i) dst[i] = mul * static_cast<float>(src[i]);
  }
}

// dst[0..n) = mul · src[0..n) rounded to T (dst contiguous); NaN stays NaN.
template <typename T>
FASTFER_VI void convert_out(const float* src, int64_t n, float mul, T* dst) {
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value) {
    for (; i < n; ++i) dst[i] = mul * src[i];
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
    for (; i < n; ++i) {
      const float f = mul * src[i];
      uint32_t u;
      std::memcpy(&u, &f, sizeof(u));
      const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // to nearest, ties to even
      bits[i] = static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
    }
  } else {
#if FASTFER_ISA_LEVEL >= 2
    for (; i + 16 <= n; i += 16) {
      const __m512 f = _mm512_mul_ps(_mm512_loadu_ps(src + i), _mm512_set1_ps(mul));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
    }
#elif FASTFER_ISA_LEVEL == 1
    for (; i + 8 <= n; i += 8) {
      const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(src + i), _mm256_set1_ps(mul));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; i < n; ++i) dst[i] = static_cast<T>(mul * src[i]);
  }
}

// dst[i][0..ld) = mul · src[row_i][0..D), zero-padded to ld columns and `total` rows; row_i = positions[i]
// when given, else i. Rows are read one by one (sequential reads the prefetcher follows).
template <typename T>
FASTFER_VI void load_rows(const T* src, int64_t stride_n, int64_t stride_d, const int64_t* positions, int64_t count,
                          int64_t D, float mul, float* dst, int64_t ld, int64_t total) {
  for (int64_t i = 0; i < total; ++i) {
    float* row = dst + i * ld;
    int64_t d = 0;
    if (i < count) {
      const T* s = src + (positions ? positions[i] : i) * stride_n;
      if (stride_d == 1) {
        convert_in(s, D, mul, row);
        d = D;
      } else {
        for (; d < D; ++d) row[d] = mul * static_cast<float>(s[d * stride_d]);
      }
    }
    for (; d < ld; ++d) row[d] = 0.0f;
  }
}

// One step of a kW × kW transpose in registers: swaps the off-diagonal B × B blocks of every 2B × 2B block.
// Transposing swaps the bits of the row and column index; the steps B = kW/2, …, 2, 1 swap one bit each.
// new[i][p] = p & B ? m[i+B][p−B] : m[i][p],  new[i+B][p] = p & B ? m[i+B][p] : m[i][p+B]  (i & B = 0)
template <int B, int... I>
FASTFER_VI constexpr vin transpose_lo(std::integer_sequence<int, I...>) {
  return vin{((I & B) ? kW + I - B : I)...};
}
template <int B, int... I>
FASTFER_VI constexpr vin transpose_hi(std::integer_sequence<int, I...>) {
  return vin{((I & B) ? kW + I : I + B)...};
}

template <int B>
FASTFER_VI void transpose_step(vn* m) {
  constexpr vin lo = transpose_lo<B>(std::make_integer_sequence<int, kW>{});
  constexpr vin hi = transpose_hi<B>(std::make_integer_sequence<int, kW>{});
#pragma GCC unroll 16
  for (int i = 0; i < kW; ++i) {
    if (i & B) continue;
    const vn a = m[i], b = m[i + B];
    m[i] = __builtin_shuffle(a, b, lo);
    m[i + B] = __builtin_shuffle(a, b, hi);
  }
}

// m[c][r] = m[r][c] for r, c < kW.
FASTFER_VI void transpose_block(vn* m) {
  if constexpr (kW >= 16) transpose_step<8>(m);
  if constexpr (kW >= 8) transpose_step<4>(m);
  transpose_step<2>(m);
  transpose_step<1>(m);
}

// dst[c][r] = src[r][c] for r < rows_pad, c < cols (both multiples of kW), rows ≥ rows reading as 0 (so the
// padding columns of dst come out zero). kW × kW blocks are transposed in registers (two-source permutes
// instead of scalar moves).
FASTFER_VI void transpose(const float* src, int64_t rows, int64_t rows_pad, int64_t cols, int64_t ld_src, float* dst,
                          int64_t ld_dst) {
  for (int64_t r0 = 0; r0 < rows_pad; r0 += kW) {
    for (int64_t c0 = 0; c0 < cols; c0 += kW) {
      vn m[kW];
#pragma GCC unroll 16
      for (int i = 0; i < kW; ++i) m[i] = r0 + i < rows ? vload(src + (r0 + i) * ld_src + c0) : vn{};
      transpose_block(m);
#pragma GCC unroll 16
      for (int i = 0; i < kW; ++i) vstore(dst + (c0 + i) * ld_dst + r0, m[i]);
    }
  }
}

// ---- vector math --------------------------------------------------------------------------------------

// exp over kW lanes, the same algorithm as common.h's exp_fast (Cody–Waite reduction, degree-7 Taylor):
// NaN propagates, x < −87 gives 0 (−inf included), x > 88.7 gives inf.
FASTFER_VI vn vexp(vn x) {
  const vn zero = {};
  const vn lo = zero - 87.0f, hi = zero + 88.0f;
  vn xc = x < lo ? lo : x;  // NaN compares false: passes through
  xc = xc > hi ? hi : xc;
  const vn n = (xc * kLog2e + kRound) - kRound;
  const vn r = (xc - n * kLn2Hi) - n * kLn2Lo;
  vn p = zero + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vin ni = __builtin_convertvector(n == n ? n : zero, vin);  // NaN lanes: any exponent, p is NaN
  const vn two_n = (vn)((ni + 127) << 23);
  const vn y = p * two_n;
  const vn inf = zero + kInf;
  return x < lo ? zero : (x > zero + 88.7f ? inf : y);
}

FASTFER_VI float hmax(vn v) {
  float m = v[0];
  for (int l = 1; l < kW; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

FASTFER_VI float hsum(vn v) {
  float s = 0.0f;
  for (int l = 0; l < kW; ++l) s += v[l];
  return s;
}

// Softmax numerator of one logits row in place: row[0..valid) → exp(row − max), row[valid..padded) → 0
// (padded a multiple of kLanes). Returns the max (NaN ignored: NaN reaches the output through its exp) and the
// sum of the exponentials. An all −inf row subtracts 0 instead of −inf, so it gives 0 rather than NaN.
FASTFER_VI void softmax_row(float* row, int64_t valid, int64_t padded, float* max_out, float* sum_out) {
  for (int64_t j = valid; j < padded; ++j) row[j] = -kInf;
  vn m = vn{} - kInf;
  for (int64_t j = 0; j < padded; j += kW) {
    const vn x = vload(row + j);
    m = x > m ? x : m;
  }
  const float row_max = hmax(m);
  const float base = row_max == -kInf ? 0.0f : row_max;
  vn total = {};
  for (int64_t j = 0; j < padded; j += kW) {
    const vn e = vexp(vload(row + j) - base);
    vstore(row + j, e);
    total += e;
  }
  *max_out = row_max;
  *sum_out = hsum(total);
}

// ---- register tiles ---------------------------------------------------------------------------------

// Column widths of the tiles, in native vectors: a row block takes kWideCV-vector tiles, then kNarrowCV,
// then single vectors. With R = FASTFER_ISA_ROWS rows, R·CV accumulators + CV operands must fit the
// registers: 32 zmm (8 × 3 + 3), 16 ymm (4 × 2 + 2), 16 xmm (2 × 4 + 4). Widths are multiples of kLanes,
// so AVX2 and portable never reach the single-vector tail.
#if FASTFER_ISA_LEVEL >= 2
constexpr int kWideCV = 3, kNarrowCV = 2;
#elif FASTFER_ISA_LEVEL == 1
constexpr int kWideCV = 2, kNarrowCV = 0;
#else
constexpr int kWideCV = 4, kNarrowCV = 0;
#endif

// s[r][0..kW·CV) = Σ_d a[r][d] · bt[d][0..kW·CV)  for r < R   (S = Q Kᵀ with K stored transposed)
template <int R, int CV>
FASTFER_VI void tile_a_bt(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t depth, float* s,
                          int64_t lds) {
  vn acc[R][CV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[r][c] = vn{};
  for (int64_t d = 0; d < depth; ++d) {
    vn b[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) b[c] = vload(bt + d * ldb + c * kW);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float x = a[r * lda + d];
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c] += x * b[c];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) vstore(s + r * lds + c * kW, acc[r][c]);
}

// s[r][0..cols) for r < R over all columns (cols a multiple of 16): column tiles as above.
template <int R>
FASTFER_VI void rows_a_bt(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t depth, int64_t cols,
                          float* s, int64_t lds) {
  int64_t c = 0;
  for (; c + kWideCV * kW <= cols; c += kWideCV * kW) tile_a_bt<R, kWideCV>(a, lda, bt + c, ldb, depth, s + c, lds);
  if constexpr (kNarrowCV > 0)
    for (; c + kNarrowCV * kW <= cols; c += kNarrowCV * kW)
      tile_a_bt<R, kNarrowCV>(a, lda, bt + c, ldb, depth, s + c, lds);
  for (; c < cols; c += kW) tile_a_bt<R, 1>(a, lda, bt + c, ldb, depth, s + c, lds);
}

// o[r][0..kW·CV) = Σ_{j<keys} p[r][j] · v[j][0..kW·CV)  for r < R   (O = P V, dQ = dS K)
template <int R, int CV>
FASTFER_VI void tile_p_v(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t keys, float* o,
                         int64_t ldo) {
  vn acc[R][CV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[r][c] = vn{};
  for (int64_t j = 0; j < keys; ++j) {
    vn b[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) b[c] = vload(v + j * ldv + c * kW);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float x = p[r * ldp + j];
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c] += x * b[c];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) vstore(o + r * ldo + c * kW, acc[r][c]);
}

template <int R>
FASTFER_VI void rows_p_v(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t keys, int64_t width,
                         float* o, int64_t ldo) {
  int64_t c = 0;
  for (; c + kWideCV * kW <= width; c += kWideCV * kW) tile_p_v<R, kWideCV>(p, ldp, v + c, ldv, keys, o + c, ldo);
  if constexpr (kNarrowCV > 0)
    for (; c + kNarrowCV * kW <= width; c += kNarrowCV * kW)
      tile_p_v<R, kNarrowCV>(p, ldp, v + c, ldv, keys, o + c, ldo);
  for (; c < width; c += kW) tile_p_v<R, 1>(p, ldp, v + c, ldv, keys, o + c, ldo);
}

// acc[j][0..kW·CV) += Σ_{r<rows} p[r][j] · x[r][0..kW·CV)  for j < K   (dV += Pᵀ dO, dK += dSᵀ Q)
template <int K, int CV>
FASTFER_VI void tile_pt_x(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, float* acc_out,
                          int64_t ld_acc) {
  vn acc[K][CV];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[k][c] = vload(acc_out + k * ld_acc + c * kW);
  for (int64_t r = 0; r < rows; ++r) {
    vn b[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) b[c] = vload(x + r * ldx + c * kW);
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const float w = p[r * ldp + k];
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[k][c] += w * b[c];
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) vstore(acc_out + k * ld_acc + c * kW, acc[k][c]);
}

template <int K>
FASTFER_VI void keys_pt_x(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, int64_t width,
                          float* acc, int64_t ld_acc) {
  int64_t c = 0;
  for (; c + kWideCV * kW <= width; c += kWideCV * kW) tile_pt_x<K, kWideCV>(p, ldp, x + c, ldx, rows, acc + c, ld_acc);
  if constexpr (kNarrowCV > 0)
    for (; c + kNarrowCV * kW <= width; c += kNarrowCV * kW)
      tile_pt_x<K, kNarrowCV>(p, ldp, x + c, ldx, rows, acc + c, ld_acc);
  for (; c < width; c += kW) tile_pt_x<K, 1>(p, ldp, x + c, ldx, rows, acc + c, ld_acc);
}

