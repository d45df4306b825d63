// Python bindings of the CUDA kernels: module fastfer._C_cuda (prebuilt) or fastfer_C_cuda (JIT-built).
//
// Same contract as bindings_cpu.cpp — raw device pointers, sizes and element strides from
// fastfer/ops/ext_api.py, outputs it allocated — plus the CUDA stream to enqueue on (the current torch
// stream of the tensors' device, passed as an integer) and device workspaces. No torch or CUDA header is
// included here; kernels/launch.h hides the launches. Launch errors raise RuntimeError. Index bounds are
// the caller's contract here (checking them would need a device-to-host copy per call).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launch.h"

#ifndef FASTFER_SOURCE_DIGEST
#define FASTFER_SOURCE_DIGEST unknown
#endif
#define FASTFER_STRINGIFY_(x) #x
#define FASTFER_STRINGIFY(x) FASTFER_STRINGIFY_(x)

namespace py = pybind11;
using namespace fastfer;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void* stream_of(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

DType dtype_code(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype: expected a code in 0..2, got " + std::to_string(code));
  return static_cast<DType>(code);
}

void positive(const char* name, int64_t value) {
  if (value < 1) throw std::invalid_argument(std::string(name) + ": expected >= 1, got " + std::to_string(value));
}

void raise_if(const char* error, const char* what) {
  if (error != nullptr) throw std::runtime_error(std::string("fastfer CUDA ") + what + ": " + error);
}

void py_patch_pool_forward(uintptr_t x, int dtype, int64_t B, int64_t N, int64_t C, int64_t stride_b, int64_t stride_n,
                           int64_t stride_c, uintptr_t pos, int64_t k, int score, uintptr_t tokens, uintptr_t index,
                           uintptr_t scores, uintptr_t stream) {
  positive("B", B), positive("N", N), positive("C", C);
  if (k < 1 || k > N) throw std::invalid_argument("k: expected 1 <= k <= N = " + std::to_string(N));
  if (score < kL1 || score > kMaxAbs) throw std::invalid_argument("score: expected a code in 0..4");
  const PatchPoolForwardArgs a{ptr<const void>(x), dtype_code(dtype), B, N, C, stride_b, stride_n, stride_c,
                               ptr<const float>(pos), k, score, ptr<void>(tokens), ptr<int64_t>(index),
                               ptr<float>(scores), 1};
  raise_if(cuda::patch_pool_forward(a, stream_of(stream)), "patch_pool_forward");
}

void py_patch_pool_backward(uintptr_t grad_tokens, uintptr_t index, int dtype, int64_t B, int64_t N, int64_t C,
                            int64_t k, uintptr_t grad_x, int64_t stride_b, int64_t stride_n, int64_t stride_c,
                            uintptr_t grad_pos, uintptr_t workspace, uintptr_t stream) {
  positive("B", B), positive("N", N), positive("C", C), positive("k", k);
  const PatchPoolBackwardArgs a{ptr<const void>(grad_tokens), ptr<const int64_t>(index), dtype_code(dtype), B, N, C, k,
                                ptr<void>(grad_x), stride_b, stride_n, stride_c, ptr<float>(grad_pos), 1};
  raise_if(cuda::patch_pool_backward(a, ptr<int32_t>(workspace), stream_of(stream)), "patch_pool_backward");
}

TokenPoolArgs token_pool_args(uintptr_t qkv, int dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                              const py::tuple& strides, double scale, int64_t M) {
  positive("B", B), positive("N", N), positive("H", H), positive("D", D), positive("M", M);
  if (D > 256) throw std::invalid_argument("D: expected a head dim <= 256, got " + std::to_string(D));
  if (strides.size() != 5) throw std::invalid_argument("qkv_strides: expected 5 strides (B, N, 3, H, D)");
  return TokenPoolArgs{ptr<const void>(qkv), dtype_code(dtype), B, N, H, D,
                       strides[0].cast<int64_t>(), strides[1].cast<int64_t>(), strides[2].cast<int64_t>(),
                       strides[3].cast<int64_t>(), strides[4].cast<int64_t>(), static_cast<float>(scale), M};
}

void py_token_pool_forward(uintptr_t qkv, int dtype, int64_t B, int64_t N, int64_t H, int64_t D,
                           const py::tuple& qkv_strides, int64_t keep, double scale, int score, uintptr_t out,
                           uintptr_t index, uintptr_t cls_scores, uintptr_t lse, uintptr_t workspace, uintptr_t stream) {
  if (keep == 0 || keep >= N) throw std::invalid_argument("keep: expected 1 <= keep <= N-1, or < 0 for no pooling");
  if (score != kLogitSum && score != kProbMean) throw std::invalid_argument("score: expected a code in 0..1");
  const TokenPoolArgs s = token_pool_args(qkv, dtype, B, N, H, D, qkv_strides, scale, keep < 0 ? N : 1 + keep);
  const ClsSelectArgs select{s, score, keep >= 0, ptr<int64_t>(index), ptr<float>(cls_scores), 1};
  const AttentionForwardArgs attend{s, ptr<const int64_t>(index), ptr<void>(out), ptr<float>(lse), 1};
  raise_if(cuda::cls_select(select, ptr<float>(workspace), stream_of(stream)), "cls_select");
  raise_if(cuda::attention_forward(attend, stream_of(stream)), "attention_forward");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastfer CUDA kernels: the `cuda` backend of fastfer::patch_pool and fastfer::token_pool_attention "
            "(the attention backward runs the Triton kernels). Called by fastfer/ops/backends/ext/launch.py with "
            "raw pointers.";
  m.attr("source_digest") = FASTFER_STRINGIFY(FASTFER_SOURCE_DIGEST);
  m.def("patch_pool_forward", &py_patch_pool_forward, "enqueue: tokens (B,k,C), index (B,k), scores (B,N)",
        py::arg("x"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("C"), py::arg("stride_b"),
        py::arg("stride_n"), py::arg("stride_c"), py::arg("pos"), py::arg("k"), py::arg("score"), py::arg("tokens"),
        py::arg("index"), py::arg("scores"), py::arg("stream"));
  m.def("patch_pool_backward", &py_patch_pool_backward, "enqueue: grad_x, grad_pos (workspace: B*N int32)",
        py::arg("grad_tokens"), py::arg("index"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("C"),
        py::arg("k"), py::arg("grad_x"), py::arg("stride_b"), py::arg("stride_n"), py::arg("stride_c"),
        py::arg("grad_pos"), py::arg("workspace"), py::arg("stream"));
  m.def("token_pool_forward", &py_token_pool_forward,
        "enqueue: out (B,M,H*D), index (B,M), cls_scores (B,N), lse (B,H,M) (workspace: B*H*N fp32)", py::arg("qkv"),
        py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("H"), py::arg("D"), py::arg("qkv_strides"),
        py::arg("keep"), py::arg("scale"), py::arg("score"), py::arg("out"), py::arg("index"), py::arg("cls_scores"),
        py::arg("lse"), py::arg("workspace"), py::arg("stream"));
}
