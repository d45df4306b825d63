// Token-pool attention on CPU (docs/design.md §2.2): CLS-row scores, selection and the attention of the kept query
// rows in one pass, and a flash-style backward that recomputes P from the saved log-sum-exp.
//
// Identities (natural log):
//   S = scale·Q Kᵀ,  lse = log Σ_j exp S,  O = exp(S − lse) V
//   P = exp(S − lse),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q
//
// Forward, per chunk of up to 16 images, as one list of tasks claimed in order (no barrier between phases):
//   1. per (image, head): K (transposed) and V into shared fp32 scratch, converted once; the CLS query row's
//      logits, softmax and output row — row 0 is always kept, so these logits serve both the scores and
//      output row 0;
//   2. per image: scores from the CLS logits of all heads, top-k selection (cls_select.cpp);
//   3. per (image, head, block of ≤ 48 kept rows): the attention of those rows against the shared K and V.
// Backward: one task per (image, head), claimed dynamically (B·H tasks keep two or four threads balanced,
// and any finer split would need a barrier or a reduction between query and key blocks), dK and dV summed
// over the query rows in a fixed order. So every output element is written by exactly one task, results
// do not depend on the thread count or schedule, and no output is written with atomics.
// The arithmetic is in attention_impl.h, compiled once per instruction-set variant (isa.h).
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"

// The AVX2 / AVX-512 variants' 32- and 64-byte vectors would be passed differently across a call than the
// baseline ABI passes them, which GCC notes. None is: every function taking one is force-inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastfer {
namespace cpu {

#if FASTFER_ISA_VARIANTS
// AVX-512 plus AMX-BF16: bf16 inputs of the forward multiply in tiles at bf16 speed with fp32 accumulation
// (amx_impl.h); fp32 / fp16 inputs and the backward run the AVX-512 code.
namespace amx {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v4,avx512bf16,amx-tile,amx-bf16,prefer-vector-width=512")))
#define FASTFER_ISA_LEVEL 2
#define FASTFER_ISA_ROWS 8
#define FASTFER_ISA_AMX 1
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
#undef FASTFER_ISA_AMX
}  // namespace amx

namespace avx512 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define FASTFER_ISA_LEVEL 2
#define FASTFER_ISA_ROWS 8
#define FASTFER_ISA_AMX 0
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
#undef FASTFER_ISA_AMX
}  // namespace avx512

namespace avx2 {
#define FASTFER_ISA_ATTR __attribute__((target("arch=x86-64-v3")))
#define FASTFER_ISA_LEVEL 1
#define FASTFER_ISA_ROWS 4
#define FASTFER_ISA_AMX 0
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
#undef FASTFER_ISA_AMX
}  // namespace avx2
#endif

namespace portable {
#define FASTFER_ISA_ATTR
#define FASTFER_ISA_LEVEL 0
#define FASTFER_ISA_ROWS 2
#define FASTFER_ISA_AMX 0
#include "attention_impl.h"
#undef FASTFER_ISA_ATTR
#undef FASTFER_ISA_LEVEL
#undef FASTFER_ISA_ROWS
#undef FASTFER_ISA_AMX
}  // namespace portable

namespace {

constexpr int64_t kQueryBlock = 48;   // query rows per forward task: 3 × 48 = APViT's 144 kept rows
constexpr int64_t kChunkImages = 16;  // forward: images whose K/V scratch is live at once (16 × APViT: 17 MB)

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
  const int64_t G = std::min(s.B, kChunkImages);
  // Shared per (image in chunk, head): kt (d_pad × n_pad), v (N × d_pad), l0 (n_pad), lse0 (16).
  const int64_t kt_size = g.d_pad * g.n_pad, v_size = K::v_floats(g), head_size = kt_size + v_size + g.n_pad + kLanes;
  float* const shared = thread_scratch(0, G * H * head_size);
  const int64_t rows_total = M - 1;  // rows 1..M-1; row 0 (CLS) comes from phase 1
  const int64_t rb = block_rows(rows_total, kQueryBlock);
  const int64_t blocks = rows_total > 0 ? ceil_div(rows_total, rb) : 0;
  // Tasks of a chunk, claimed in order from one counter: first every (image, head) of phase 1, then every
  // (image, head, query block) of phase 3. The thread that finishes an image's last head runs its
  // selection (phase 2) and marks it ready; a phase-3 task waits for its image, which only tasks claimed
  // before it can hold up — so no barrier between the phases (a barrier costs a whole time slice whenever
  // another process has one of the cores), and no deadlock.
  const bool in_place = K::template v_in_place<T>(s, g);
  const int64_t ldv = in_place ? s.stride_n : g.d_pad;
  const auto v_of = [&](const T* head, const float* base) -> const float* {
    return in_place ? reinterpret_cast<const float*>(head + 2 * s.stride_3) : base + kt_size;
  };
  const int64_t chunks = ceil_div(s.B, G);
  std::unique_ptr<std::atomic<int64_t>[]> next(new std::atomic<int64_t>[chunks]);
  std::unique_ptr<std::atomic<int64_t>[]> heads_done(new std::atomic<int64_t>[s.B]);
  for (int64_t c = 0; c < chunks; ++c) next[c].store(0);
  for (int64_t b = 0; b < s.B; ++b) heads_done[b].store(0);
#pragma omp parallel num_threads(a.threads)
  {
    float* const ktmp = thread_scratch(1, g.N * g.d_pad);
    // Query rows go in groups of 8 (16 for AMX tiles): q, logits sc (then, for AMX, P in bf16), outputs o.
    float* const q = thread_scratch(2, (std::max(rb, int64_t{8}) + 16) * g.d_pad);
    float* const sc = thread_scratch(3, 16 * g.n_pad + 16 * (g.n_pad / 2 + 16));
    float* const o = thread_scratch(4, 16 * g.d_pad);
    float* const lse_heads = thread_scratch(5, H);
    std::vector<int32_t> order(g.N);
    std::vector<uint8_t> kept(g.N);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b0 = c * G, images = std::min(G, s.B - b0), prepare = images * H;
      for (int64_t t = next[c]++; t < prepare + images * H * blocks; t = next[c]++) {
        if (t < prepare) {
          const int64_t b = b0 + t / H, h = t % H;
          float* base = shared + t * head_size;
          float* lse0 = base + kt_size + v_size + g.n_pad;
          const T* head = qkv + b * s.stride_b + h * s.stride_h;
          K::prepare_head(s, head, g, base, v_of(head, base), ldv, base + kt_size + v_size, lse0,
                          out + b * M * HD + h * s.D, ktmp, q, sc, o);
          a.lse[(b * H + h) * M] = *lse0;
          if (heads_done[b].fetch_add(1, std::memory_order_acq_rel) == H - 1) {  // the image's last head
            const float* first = shared + (b - b0) * H * head_size;
            for (int64_t hh = 0; hh < H; ++hh) lse_heads[hh] = first[hh * head_size + kt_size + v_size + g.n_pad];
            score_and_select(first + kt_size + v_size, head_size, lse_heads, H, g.N, M, sel.score, sel.select,
                             sel.cls_scores + b * g.N, sel.index + b * M, order.data(), kept.data());
            heads_done[b].store(H + 1, std::memory_order_release);
          }
          continue;
        }
        const int64_t u = t - prepare, head = u / blocks, blk = u % blocks;
        const int64_t b = b0 + head / H, h = head % H;
        while (heads_done[b].load(std::memory_order_acquire) != H + 1) std::this_thread::yield();
        const int64_t r0 = 1 + blk * rb, count = std::min(rb, M - r0);
        if (count <= 0) continue;
        const float* base = shared + head * head_size;
        const T* head_in = qkv + b * s.stride_b + h * s.stride_h;
        K::attend_rows(s, head_in, g, base, v_of(head_in, base), ldv, a.index + b * M + r0, count,
                       out + (b * M + r0) * HD + h * s.D, HD, a.lse + (b * H + h) * M + r0, q, sc, o);
      }
      if (c + 1 < chunks) {
#pragma omp barrier  // the next chunk reuses the shared scratch
      }
    }
  }
}

// One task per (image, head), claimed dynamically; each writes only its own head's slots of dqkv.
template <typename T, typename K>
void backward_typed(const AttentionBackwardArgs& a) {
  const TokenPoolArgs& s = a.qkv;
  const typename K::Dims g = K::dims_of(s);
  const T* qkv = static_cast<const T*>(s.qkv);
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const T* out = static_cast<const T*>(a.out);
  T* dqkv = static_cast<T*>(a.dqkv);
  const int64_t H = s.H, HD = s.H * s.D, M = s.M;
#pragma omp parallel num_threads(a.threads)
  {
    float* const scratch = thread_scratch(1, K::grad_head_floats(g));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < s.B * H; ++t) {
      const int64_t b = t / H, h = t % H;
      const int64_t row0 = b * M * HD + h * s.D;  // (b, 0, h, 0) in the (B, M, H·D) tensors
      K::grad_head(s, qkv + b * s.stride_b + h * s.stride_h, a.index + b * M, grad_out + row0, out + row0,
                   a.lse + t * M, HD, g, dqkv + b * g.N * 3 * HD + h * s.D, scratch);
    }
  }
}

// The variant's functions as a type, so that the drivers above are written once.
#define FASTFER_VARIANT(ns)                                                            \
  struct ns##_kernels {                                                                \
    using Dims = ns::Dims;                                                             \
    static Dims dims_of(const TokenPoolArgs& s) { return ns::dims_of(s); }             \
    static int64_t grad_head_floats(const Dims& g) { return ns::grad_head_floats(g); } \
    static int64_t v_floats(const Dims& g) { return ns::v_floats(g); }                 \
    template <typename T> static bool v_in_place(const TokenPoolArgs& s, const Dims& g) { return ns::v_in_place<T>(s, g); } \
    template <typename... A> static void prepare_head(A&&... x) { ns::prepare_head(x...); } \
    template <typename... A> static void attend_rows(A&&... x) { ns::attend_rows(x...); }   \
    template <typename... A> static void grad_head(A&&... x) { ns::grad_head(x...); }       \
  };
#if FASTFER_ISA_VARIANTS
FASTFER_VARIANT(amx)
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
    case Isa::kAmx: return fn(amx_kernels{});
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
