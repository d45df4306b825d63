// Host-side entry points of the CUDA kernels (kernels/*.cu); arguments in csrc/op_args.h.
//
// Each launcher enqueues its kernels on `stream` (a cudaStream_t passed as void*, so that callers need no
// CUDA header) and returns nullptr on success or CUDA's error string. All pointers are device memory.
// Workspaces are device buffers the caller allocates (sizes below), so the kernels never allocate.
#pragma once

#include "op_args.h"

namespace fastfer {
namespace cuda {

const char* patch_pool_forward(const PatchPoolForwardArgs& a, void* stream);

// workspace: B·N int32 (each position's token slot, or -1).
const char* patch_pool_backward(const PatchPoolBackwardArgs& a, int32_t* workspace, void* stream);

// workspace: B·H·N fp32 (the CLS-row logits of every head).
const char* cls_select(const ClsSelectArgs& a, float* workspace, void* stream);

const char* attention_forward(const AttentionForwardArgs& a, void* stream);

}  // namespace cuda
}  // namespace fastfer
