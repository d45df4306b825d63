// Helpers shared by the CPU kernels: element types, OpenMP, CPU-feature clones, a vectorisable exp, and
// the top-k selection rule every fastfer backend follows.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <new>
#include <limits>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// Hot loops are compiled once per instruction set (see isa.h: AVX-512, AVX2+FMA, baseline x86-64) and
// the variant is chosen at run time from the CPU's features, or forced with FASTFER_CPU_KERNELS.
#include "isa.h"

namespace fastfer {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T from_float(float v) {
  return static_cast<T>(v);  // round to nearest even, as torch's .to(dtype)
}

// Calls fn(T{}) with T the C++ element type of dtype.
template <typename Fn>
inline void dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      fn(float{});
      break;
    case DType::kFloat16:
      fn(c10::Half{});
      break;
    case DType::kBFloat16:
      fn(c10::BFloat16{});
      break;
  }
}

inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }
inline int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }

// Grow-only fp32 scratch of the calling thread, kept between kernel calls and aligned to a cache line
// (vector loads then never split a line). Page-faulting and clearing fresh megabytes on every call cost
// more than some kernels' arithmetic. `slot` names the buffer (several are live at once; slot 0 is the
// one the calling thread shares with the OpenMP team, 1.. are per-thread). Contents are unspecified:
// callers write before they read, padding included.
inline float* thread_scratch(int slot, int64_t count) {
  constexpr int kSlots = 8;
  struct Buffers {
    float* data[kSlots] = {};
    int64_t size[kSlots] = {};
    ~Buffers() {
      for (float* p : data) std::free(p);
    }
  };
  thread_local Buffers buffers;
  if (buffers.size[slot] < count) {
    std::free(buffers.data[slot]);
    buffers.data[slot] = nullptr;
    buffers.size[slot] = 0;
    const int64_t floats = round_up(count, 16);
    float* p = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(floats) * sizeof(float)));
    if (p == nullptr) throw std::bad_alloc();
    buffers.data[slot] = p;
    buffers.size[slot] = floats;
  }
  return buffers.data[slot];
}

// exp(x) in fp32 without libm, so that loops over it vectorise (std::exp does not without -ffast-math,
// which would also break the NaN semantics the tests check). exp(x) = 2^n · exp(r), n = round(x·log2 e),
// r = x − n·ln 2 split in two constants (Cody–Waite) so r is exact, |r| ≤ ln2/2; a degree-7 Taylor
// polynomial of exp(r) is then accurate to < 1e-8 relative. NaN propagates; x < −87 flushes to 0
// (this covers −inf); x > 88.7 gives inf.
// Constants of every exp of the kernels (this one, vec_impl.h's vexp, amx_impl.h's exp_nonpositive).
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.42860682030941723e-6f;
constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding and subtracting it rounds to an integer

inline float exp_fast(float x) {
  float xc = x < -87.0f ? -87.0f : x;    // comparisons with NaN are false: NaN passes through
  xc = xc > 88.0f ? 88.0f : xc;
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n as a float bit pattern
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const float y = p * two_n;
  return x < -87.0f ? 0.0f : (x > 88.7f ? kInf : y);
}

// True when score a at position i ranks before score b at position j: higher first, NaN below every
// number (−inf included), ties to the lower position. A strict total order, as std::nth_element needs.
inline bool ranks_before(float a, int64_t i, float b, int64_t j) {
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a != b) return a > b;
  return i < j;
}

// Writes offset + p for the k best positions p of scores[0..n) to out[0..k), ascending (APViT keeps raster
// order). O(n) on average: nth_element partitions, then a scan over flags restores positional order.
// scratch: n int32 and n bytes.
inline void select_topk_ascending(const float* scores, int64_t n, int64_t k, int64_t offset, int64_t* out,
                                  int32_t* order, uint8_t* kept) {
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) out[i] = offset + i;
    return;
  }
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  std::nth_element(order, order + (k - 1), order + n, [scores](int32_t i, int32_t j) {
    return ranks_before(scores[i], i, scores[j], j);
  });
  std::fill(kept, kept + n, uint8_t{0});
  for (int64_t t = 0; t < k; ++t) kept[order[t]] = 1;
  int64_t slot = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (kept[i]) out[slot++] = offset + i;
  }
}

}  // namespace cpu
}  // namespace fastfer
