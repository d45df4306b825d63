// Python bindings of the CPU kernels: module fastfer._C_cpu (prebuilt) or fastfer_C_cpu (JIT-built).
//
// The functions take raw data pointers, sizes and element strides, which fastfer/ops/ext_api.py reads
// off the tensors after checking dtypes, devices and layouts, and into outputs it allocated (poisoned under
// FASTFER_POISON=1). No torch header is included anywhere in the extension: torch/extension.h alone takes
// a minute or more to compile, and without it the whole CPU build takes seconds and does not depend on
// torch's C++ ABI. The GIL is released while a kernel runs. Index tensors are bounds-checked here, since
// a bad index would write out of bounds; everything else is the caller's contract.
//
// Kernel variant (csrc/cpu/isa.h): FASTFER_CPU_KERNELS is read once, when the module is imported —
// "auto" (default, the widest instruction set this CPU has), "amx" (AVX-512 plus AMX-BF16 tiles for bf16
// attention: Sapphire Rapids and later), "avx512", "avx2" or "portable" (baseline
// x86-64, as on a CPU without AVX) — and the choice is passed to every kernel call. kernels() says what
// runs; set_kernels(name) changes it (tests run both the AVX-512 and the portable variant in one process).
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels.h"

// Digest of the sources this module was built from (fastfer/ops/_ext_sources.py); the loader refuses a
// prebuilt module whose digest differs from the sources next to it.
#ifndef FASTFER_SOURCE_DIGEST
#define FASTFER_SOURCE_DIGEST unknown
#endif
#define FASTFER_STRINGIFY_(x) #x
#define FASTFER_STRINGIFY(x) FASTFER_STRINGIFY_(x)

namespace py = pybind11;
using namespace fastfer;

namespace {

using fastfer::cpu::Isa;

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::kAuto, Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    if (name == fastfer::cpu::isa_name(isa)) return isa;
  }
  throw std::invalid_argument("FASTFER_CPU_KERNELS: expected one of auto, amx, avx512, avx2, portable, got '" + name + "'");
}

// The variant every call uses (resolved, never kAuto), and why (for kernels()).
std::atomic<int> g_isa{static_cast<int>(Isa::kPortable)};
std::string g_isa_note;

Isa current_isa() { return static_cast<Isa>(g_isa.load(std::memory_order_relaxed)); }

// Chooses the variant `name` names; an unsupported one (the CPU lacks its instructions) is an error.
void choose_isa(const std::string& name) {
  const Isa wanted = parse_isa(name);
  if (!fastfer::cpu::isa_supported(fastfer::cpu::resolve_isa(wanted)))
    throw std::invalid_argument(std::string("kernels '") + name + "': this CPU (or this build) cannot run them");
  g_isa.store(static_cast<int>(fastfer::cpu::resolve_isa(wanted)), std::memory_order_relaxed);
}

// At import: FASTFER_CPU_KERNELS, or auto. A bad value must not make the module unimportable (the loader
// would take it for a broken build), so it falls back to auto and kernels() says why.
void init_isa() {
  const char* env = std::getenv("FASTFER_CPU_KERNELS");
  const std::string name = env && *env ? env : "auto";
  try {
    choose_isa(name);
  } catch (const std::invalid_argument& e) {
    choose_isa("auto");
    g_isa_note = std::string(" (FASTFER_CPU_KERNELS ignored: ") + e.what() + ")";
  }
}

std::string py_kernels() { return std::string(fastfer::cpu::isa_name(current_isa())) + g_isa_note; }

// Returns the previous variant's name.
std::string py_set_kernels(const std::string& name) {
  const std::string previous = fastfer::cpu::isa_name(current_isa());
  choose_isa(name);
  g_isa_note.clear();
  return previous;
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

DType dtype_code(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype: expected a code in 0..2, got " + std::to_string(code));
  return static_cast<DType>(code);
}

void positive(const char* name, int64_t value) {
  if (value < 1) throw std::invalid_argument(std::string(name) + ": expected >= 1, got " + std::to_string(value));
}

// index (rows, cols) int64 contiguous; every entry must lie in [0, limit).
void check_index(const int64_t* index, int64_t rows, int64_t cols, int64_t limit) {
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (index[i] < 0 || index[i] >= limit)
      throw std::invalid_argument("index: entry " + std::to_string(index[i]) + " at flat position " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(limit) + ")");
  }
}

void py_patch_pool_forward(uintptr_t x, int dtype, int64_t B, int64_t N, int64_t C, int64_t stride_b, int64_t stride_n,
                        int64_t stride_c, uintptr_t pos, int64_t k, int score, uintptr_t tokens, uintptr_t index,
                        uintptr_t scores, int threads) {
  positive("B", B), positive("N", N), positive("C", C), positive("threads", threads);
  if (k < 1 || k > N) throw std::invalid_argument("k: expected 1 <= k <= N = " + std::to_string(N));
  if (score < kL1 || score > kMaxAbs) throw std::invalid_argument("score: expected a code in 0..4");
  PatchPoolForwardArgs a{ptr<const void>(x), dtype_code(dtype), B, N, C, stride_b, stride_n, stride_c,
                         ptr<const float>(pos), k, score, ptr<void>(tokens), ptr<int64_t>(index), ptr<float>(scores),
                         threads};
  py::gil_scoped_release no_gil;
  fastfer::cpu::patch_pool_forward(a, current_isa());
}

void py_patch_pool_backward(uintptr_t grad_tokens, uintptr_t index, int dtype, int64_t B, int64_t N, int64_t C, int64_t k,
                         uintptr_t grad_x, int64_t stride_b, int64_t stride_n, int64_t stride_c, uintptr_t grad_pos,
                         int threads) {
  positive("B", B), positive("N", N), positive("C", C), positive("k", k), positive("threads", threads);
  check_index(ptr<const int64_t>(index), B, k, N);
  PatchPoolBackwardArgs a{ptr<const void>(grad_tokens), ptr<const int64_t>(index), dtype_code(dtype), B, N, C, k,
                          ptr<void>(grad_x), stride_b, stride_n, stride_c, ptr<float>(grad_pos), threads};
  py::gil_scoped_release no_gil;
  fastfer::cpu::patch_pool_backward(a, current_isa());
}

TokenPoolArgs token_pool_args(uintptr_t qkv, int dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                              const py::tuple& strides, double scale, int64_t M) {
  positive("B", B), positive("N", N), positive("H", H), positive("D", D), positive("M", M);
  if (strides.size() != 5) throw std::invalid_argument("qkv_strides: expected 5 strides (B, N, 3, H, D)");
  return TokenPoolArgs{ptr<const void>(qkv), dtype_code(dtype), B, N, H, D,
                       strides[0].cast<int64_t>(), strides[1].cast<int64_t>(), strides[2].cast<int64_t>(),
                       strides[3].cast<int64_t>(), strides[4].cast<int64_t>(), static_cast<float>(scale), M};
}

// keep < 0: no pooling, every token is a query row (M = N).
void py_token_pool_forward(uintptr_t qkv, int dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                        const py::tuple& qkv_strides, int64_t keep, double scale, int score, uintptr_t out,
                        uintptr_t index, uintptr_t cls_scores, uintptr_t lse, int threads) {
  positive("threads", threads);
  if (keep == 0 || keep >= N) throw std::invalid_argument("keep: expected 1 <= keep <= N-1, or < 0 for no pooling");
  if (score != kLogitSum && score != kProbMean) throw std::invalid_argument("score: expected a code in 0..1");
  const TokenPoolArgs s = token_pool_args(qkv, dtype, B, N, H, D, qkv_strides, scale, keep < 0 ? N : 1 + keep);
  const ClsSelectArgs select{s, score, keep >= 0, ptr<int64_t>(index), ptr<float>(cls_scores), threads};
  const AttentionForwardArgs attend{s, ptr<const int64_t>(index), ptr<void>(out), ptr<float>(lse), threads};
  py::gil_scoped_release no_gil;
  fastfer::cpu::token_pool_forward(select, attend, current_isa());
}

// The query rows in index must be unique (each row's dQ is written, not accumulated).
void py_token_pool_backward(uintptr_t grad_out, uintptr_t qkv, int dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                         const py::tuple& qkv_strides, uintptr_t out, uintptr_t lse, uintptr_t index, int64_t M,
                         double scale, uintptr_t dqkv, int threads) {
  positive("threads", threads);
  const TokenPoolArgs s = token_pool_args(qkv, dtype, B, N, H, D, qkv_strides, scale, M);
  check_index(ptr<const int64_t>(index), B, M, N);
  const AttentionBackwardArgs a{s, ptr<const int64_t>(index), ptr<const void>(grad_out), ptr<const void>(out),
                                ptr<const float>(lse), ptr<void>(dqkv), threads};
  py::gil_scoped_release no_gil;
  fastfer::cpu::attention_backward(a, current_isa());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastfer CPU kernels (C++/OpenMP): the `cpu` backend of fastfer::patch_pool and "
            "fastfer::token_pool_attention. Called by fastfer/ops/ext_api.py with raw pointers.";
  m.attr("source_digest") = FASTFER_STRINGIFY(FASTFER_SOURCE_DIGEST);
  init_isa();
  m.def("kernels", &py_kernels, "the kernel variant in use: avx512, avx2 or portable");
  m.def("set_kernels", &py_set_kernels, "use variant auto|avx512|avx2|portable from now on; returns the previous one",
        py::arg("name"));
  m.def("patch_pool_forward", &py_patch_pool_forward, "fill tokens (B,k,C), index (B,k), scores (B,N)", py::arg("x"),
        py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("C"), py::arg("stride_b"), py::arg("stride_n"),
        py::arg("stride_c"), py::arg("pos"), py::arg("k"), py::arg("score"), py::arg("tokens"), py::arg("index"),
        py::arg("scores"), py::arg("threads"));
  m.def("patch_pool_backward", &py_patch_pool_backward, "fill grad_x (strided) and grad_pos (N,C) fp32 (pointer 0: none)",
        py::arg("grad_tokens"), py::arg("index"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("C"),
        py::arg("k"), py::arg("grad_x"), py::arg("stride_b"), py::arg("stride_n"), py::arg("stride_c"),
        py::arg("grad_pos"), py::arg("threads"));
  m.def("token_pool_forward", &py_token_pool_forward, "fill out (B,M,H*D), index (B,M), cls_scores (B,N), lse (B,H,M)",
        py::arg("qkv"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("H"), py::arg("D"),
        py::arg("qkv_strides"), py::arg("keep"), py::arg("scale"), py::arg("score"), py::arg("out"), py::arg("index"),
        py::arg("cls_scores"), py::arg("lse"), py::arg("threads"));
  m.def("token_pool_backward", &py_token_pool_backward, "fill dqkv (B,N,3,H,D) contiguous", py::arg("grad_out"),
        py::arg("qkv"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("H"), py::arg("D"),
        py::arg("qkv_strides"), py::arg("out"), py::arg("lse"), py::arg("index"), py::arg("M"), py::arg("scale"),
        py::arg("dqkv"), py::arg("threads"));
}
