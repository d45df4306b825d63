// Token-pool attention on CPU (DESIGN §2.2): CLS-row scores, selection and the attention of the kept query
// rows in one pass, and a flash-style backward that recomputes P from the saved log-sum-exp.
//
// Identities (natural log):
//   S = scale·Q Kᵀ,  lse = log Σ_j exp S,  O = exp(S − lse) V
//   P = exp(S − lse),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q
//
// Forward, per chunk of images (small enough for the caches, large enough to keep every thread busy):
//   1. per (image, head): K (transposed) and V into shared fp32 scratch, converted once; the CLS query row's
//      logits, softmax and output row — row 0 is always kept, so these logits serve both the scores and
//      output row 0;
//   2. per image: scores from the CLS logits of all heads, top-k selection (cls_select.cpp);
//   3. per (image, head, block of ≤ 48 kept rows): the attention of those rows against the shared K and V.
// Backward, per chunk: 1. per (image, head) the operands into shared scratch; 2. per (image, head, query
// block) P and dS (kept in scratch) and dQ of those rows; 3. per (image, head, key block) dK and dV of those
// keys, each summed over all query rows in a fixed order. So every output element is written by exactly
// one task, results do not depend on the thread count or schedule, and there are no atomics.
// The arithmetic is in attention_impl.h, compiled once per instruction-set variant (isa.h).
#include <vector>

#include "common.h"

// The portable variant lowers the 64-byte vectors to SSE; GCC then notes that such a value would be passed
// differently across a call. None is: every function taking one is force-inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastfer {
namespace cpu {

#if FASTFER_ISA_VARIANTS
namespace avx512 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define FASTFER_ISA_LEVEL 2
#define FASTFER_ISA_ROWS 8
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
}  // namespace avx512

namespace avx2 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v3")))
#define FASTFER_ISA_LEVEL 1
#define FASTFER_ISA_ROWS 2
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
}  // namespace avx2
#endif

namespace portable {
#define FASTFER_ISA_ATTR
#define FASTFER_ISA_LEVEL 0
#define FASTFER_ISA_ROWS 1
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
}  // namespace portable

namespace {

constexpr int64_t kQueryBlock = 48;  // query rows per task: 3 × 48 = APViT's 144 kept rows
constexpr int64_t kKeyBlock = 32;    // keys per backward dK/dV task

// Images per chunk: enough (image, head) tasks for every thread to get several in phase 1.
int64_t chunk_images(int64_t B, int64_t H, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(B, ceil_div(8 * static_cast<int64_t>(threads), H)));
}

// Splits `total` rows into ceil(total / max_block) blocks of a multiple of 8 rows (the last one shorter).
int64_t block_rows(int64_t total, int64_t max_block) {
  if (total <= 0) return 8;
  return round_up(ceil_div(total, ceil_div(total, max_block)), 8);
}

template <typename T, typename K>
void forward_typed(const ClsSelectArgs& sel, const AttentionForwardArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const typename K::Dims g = K::dims_of(s);
  const T* qkv = static_cast<const T*>(s.qkv);
  T* out = static_cast<T*>(a.out);
  const int64_t H = s.H, HD = s.H * s.D, M = s.M;
  const int64_t G = chunk_images(s.B, H, a.threads);
  // Shared per (image in chunk, head): kt (D × n_pad), v (N × d_pad), l0 (n_pad), lse0 (16).
  const int64_t kt_size = g.D * g.n_pad, v_size = g.N * g.d_pad, head_size = kt_size + v_size + g.n_pad + kLanes;
  Scratch shared(G * H * head_size);
  const int64_t rows_total = M - 1;  // rows 1..M-1; row 0 (CLS) comes from phase 1
  const int64_t rb = block_rows(rows_total, kQueryBlock);
  const int64_t blocks = rows_total > 0 ? ceil_div(rows_total, rb) : 0;
#pragma omp parallel num_threads(a.threads)
  {
    Scratch ktmp(g.N * g.d_pad), q(std::max(rb, int64_t{8}) * g.d_pad), sc(8 * g.n_pad), o(8 * g.d_pad);
    Scratch lse_heads(round_up(H, kLanes));
    std::vector<int32_t> order(g.N);
    std::vector<uint8_t> kept(g.N);
    for (int64_t b0 = 0; b0 < s.B; b0 += G) {
      const int64_t images = std::min(G, s.B - b0);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < images * H; ++t) {
        const int64_t b = b0 + t / H, h = t % H;
        float* base = shared.data() + t * head_size;
        float* lse0 = base + kt_size + v_size + g.n_pad;
        K::prepare_head(s, qkv + b * s.stride_b + h * s.stride_h, g, base, base + kt_size, base + kt_size + v_size,
                        lse0, out + b * M * HD + h * s.D, ktmp.data(), q.data(), sc.data(), o.data());
        a.lse[(b * H + h) * M] = *lse0;
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < images; ++i) {
        const int64_t b = b0 + i;
        const float* first = shared.data() + i * H * head_size;
        for (int64_t h = 0; h < H; ++h) lse_heads.data()[h] = first[h * head_size + kt_size + v_size + g.n_pad];
        score_and_select(first + kt_size + v_size, head_size, lse_heads.data(), H, g.N, M, sel.score, sel.select,
                         sel.cls_scores + b * g.N, sel.index + b * M, order.data(), kept.data());
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < images * H * blocks; ++t) {
        const int64_t head = t / blocks, blk = t % blocks;
        const int64_t b = b0 + head / H, h = head % H;
        const int64_t r0 = 1 + blk * rb, count = std::min(rb, M - r0);
        if (count <= 0) continue;
        const float* base = shared.data() + head * head_size;
        K::attend_rows(s, qkv + b * s.stride_b + h * s.stride_h, g, base, base + kt_size, a.index + b * M + r0, count,
                       out + (b * M + r0) * HD + h * s.D, HD, a.lse + (b * H + h) * M + r0, q.data(), sc.data(),
                       o.data());
      }
    }
  }
}

template <typename T, typename K>
void backward_typed(const AttentionBackwardArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const typename K::Dims g = K::dims_of(s);
  const T* qkv = static_cast<const T*>(s.qkv);
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const T* out = static_cast<const T*>(a.out);
  T* dqkv = static_cast<T*>(a.dqkv);
  const int64_t H = s.H, HD = s.H * s.D, M = s.M, token_stride = 3 * HD;
  const int64_t G = chunk_images(s.B, H, a.threads);
  const int64_t head_size = K::grad_head_floats(g);
  Scratch shared(G * H * head_size);
  const int64_t m8 = round_up(M, 8), n8 = round_up(g.N, 8);
  const int64_t rb = block_rows(m8, kQueryBlock), q_blocks = ceil_div(m8, rb);
  const int64_t kb = block_rows(n8, kKeyBlock), k_blocks = ceil_div(n8, kb);
#pragma omp parallel num_threads(a.threads)
  {
    Scratch vtmp(g.N * g.d_pad), orow(g.d_pad), dq(8 * g.d_pad), acc(kb * g.d_pad);
    for (int64_t b0 = 0; b0 < s.B; b0 += G) {
      const int64_t images = std::min(G, s.B - b0);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < images * H; ++t) {
        const int64_t b = b0 + t / H, h = t % H;
        const int64_t row0 = b * M * HD + h * s.D;  // (b, 0, h, 0) in the (B, M, H·D) tensors
        K::prepare_grad_head(s, qkv + b * s.stride_b + h * s.stride_h, a.index + b * M, grad_out + row0, out + row0,
                             a.lse + (b * H + h) * M, HD, g, K::grad_head_at(shared.data() + t * head_size, g),
                             dqkv + b * g.N * token_stride + h * s.D, token_stride, vtmp.data(), orow.data());
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < images * H * q_blocks; ++t) {
        const int64_t head = t / q_blocks, blk = t % q_blocks;
        const int64_t b = b0 + head / H, h = head % H;
        const int64_t r0 = blk * rb, r1 = std::min(m8, r0 + rb);
        K::grad_rows(g, K::grad_head_at(shared.data() + head * head_size, g), r0, r1, s.scale, a.index + b * M,
                     dqkv + b * g.N * token_stride + h * s.D, token_stride, dq.data());
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < images * H * k_blocks; ++t) {
        const int64_t head = t / k_blocks, blk = t % k_blocks;
        const int64_t b = b0 + head / H, h = head % H;
        const int64_t j0 = blk * kb, j1 = std::min(n8, j0 + kb);
        T* slots = dqkv + b * g.N * token_stride + h * s.D;
        K::grad_keys(g, K::grad_head_at(shared.data() + head * head_size, g), j0, j1, slots + HD, slots + 2 * HD,
                     token_stride, acc.data());
      }
    }
  }
}

// The variant's functions as a type, so that the drivers above are written once.
#define FASTFER_VARIANT(ns)                                                            \
  struct ns##_kernels {                                                                \
    using Dims = ns::Dims;                                                             \
    using GradHead = ns::GradHead;                                                     \
    static Dims dims_of(const TokenPoolArgs& s) { return ns::dims_of(s); }             \
    static int64_t grad_head_floats(const Dims& g) { return ns::grad_head_floats(g); } \
    static GradHead grad_head_at(float* p, const Dims& g) { return ns::grad_head_at(p, g); } \
    template <typename... A> static void prepare_head(A&&... x) { ns::prepare_head(x...); } \
    template <typename... A> static void attend_rows(A&&... x) { ns::attend_rows(x...); }   \
    template <typename... A> static void prepare_grad_head(A&&... x) { ns::prepare_grad_head(x...); } \
    template <typename... A> static void grad_rows(A&&... x) { ns::grad_rows(x...); }       \
    template <typename... A> static void grad_keys(A&&... x) { ns::grad_keys(x...); }       \
  };
#if FASTFER_ISA_VARIANTS
FASTFER_VARIANT(avx512)
FASTFER_VARIANT(avx2)
#endif
FASTFER_VARIANT(portable)
#undef FASTFER_VARIANT

// Calls fn(Kernels{}) with the variant type of isa (resolved: never kAuto).
template <typename Fn>
void with_variant(Isa isa, Fn&& fn) {
  switch (resolve_isa(isa)) {
#if FASTFER_ISA_VARIANTS
    case Isa::kAvx512: return fn(avx512_kernels{});
    case Isa::kAvx2: return fn(avx2_kernels{});
#endif
    default: return fn(portable_kernels{});
  }
}

}  // namespace

void token_pool_forward(const ClsSelectArgs& select, const AttentionForwardArgs& attend, Isa isa) {
  dispatch(attend.qkv.dtype, [&](auto tag) {
    with_variant(isa, [&](auto kernels) { forward_typed<decltype(tag), decltype(kernels)>(select, attend); });
  });
}

void attention_backward(const AttentionBackwardArgs& a, Isa isa) {
  dispatch(a.qkv.dtype, [&](auto tag) {
    with_variant(isa, [&](auto kernels) { backward_typed<decltype(tag), decltype(kernels)>(a); });
  });
}

}  // namespace cpu
}  // namespace fastfer
