// Arguments of the fastfer kernels, shared by the CPU (csrc/cpu/) and CUDA (kernels/) implementations.
//
// Plain structs of pointers, sizes and element strides, filled by the Python bindings from tensors that
// fastfer/ops/ext_api.py checked and allocated; no torch header is needed to use them. Every pointer is to
// memory the caller owns (host memory for the CPU kernels, device memory for the CUDA ones); outputs are
// fully overwritten. Shapes follow docs/design.md §2: B batch, N positions/tokens, C channels, H heads, D head dim,
// k / M kept positions / query rows. `threads` is the OpenMP thread count (ignored by the CUDA kernels).
#pragma once

#include <cstdint>

namespace fastfer {

// Element type of the tensor inputs and outputs; all arithmetic is fp32.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Patch score over channels (same codes as fastfer.ops.reference.PATCH_SCORES order).
enum PatchScore : int { kL1 = 0, kSum = 1, kL2 = 2, kMax = 3, kMaxAbs = 4 };
// CLS-row score over heads (reference.CLS_SCORES order).
enum ClsScore : int { kLogitSum = 0, kProbMean = 1 };

struct PatchPoolForwardArgs {
  const void* x;           // map seen as (B, N, C) through the strides below (NCHW, channels_last, tokens)
  DType dtype;
  int64_t B, N, C;
  int64_t stride_b, stride_n, stride_c;
  const float* pos;        // (N, C) contiguous fp32, or nullptr
  int64_t k;
  int score;               // PatchScore
  void* tokens;            // out (B, k, C) contiguous, dtype
  int64_t* index;          // out (B, k), ascending positions
  float* scores;           // out (B, N)
  int threads;
};

struct PatchPoolBackwardArgs {
  const void* grad_tokens;  // (B, k, C) contiguous, dtype
  const int64_t* index;     // (B, k), unique positions
  DType dtype;
  int64_t B, N, C, k;
  void* grad_x;             // out, seen as (B, N, C) through the strides below
  int64_t stride_b, stride_n, stride_c;
  float* grad_pos;          // out (N, C) contiguous fp32 (sum over the batch), or nullptr
  int threads;
};

struct TokenPoolArgs {
  const void* qkv;          // (B, N, 3, H, D) read through the strides below
  DType dtype;
  int64_t B, N, H, D;
  int64_t stride_b, stride_n, stride_3, stride_h, stride_d;
  float scale;
  int64_t M;                // kept query rows: 1 + keep, or N without pooling
};

struct ClsSelectArgs {
  TokenPoolArgs qkv;
  int score;                // ClsScore
  bool select;              // false: keep every token (index = 0..N-1)
  int64_t* index;           // out (B, M): 0, then the kept positions ascending
  float* cls_scores;        // out (B, N)
  int threads;
};

struct AttentionForwardArgs {
  TokenPoolArgs qkv;
  const int64_t* index;     // (B, M) query rows to compute
  void* out;                // out (B, M, H*D) contiguous, dtype
  float* lse;               // out (B, H, M), natural log
  int threads;
};

struct AttentionBackwardArgs {
  TokenPoolArgs qkv;
  const int64_t* index;     // (B, M), unique rows
  const void* grad_out;     // (B, M, H*D) contiguous, dtype
  const void* out;          // (B, M, H*D) contiguous, dtype (the forward output)
  const float* lse;         // (B, H, M)
  void* dqkv;               // out (B, N, 3, H, D) contiguous, dtype; dropped query rows get 0
  int threads;
};

}  // namespace fastfer
