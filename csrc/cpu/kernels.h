// Plain C++ interface of the OpenMP CPU kernels (csrc/cpu/*.cpp); arguments in csrc/op_args.h.
//
// The kernel files include no torch headers (only c10's header-only Half/BFloat16), so they compile in
// seconds; all arithmetic is fp32 whatever the element type.
#pragma once

#include "op_args.h"

namespace fastfer {
namespace cpu {

void patch_pool_forward(const PatchPoolForwardArgs& a);
void patch_pool_backward(const PatchPoolBackwardArgs& a);
void cls_select(const ClsSelectArgs& a);
void attention_forward(const AttentionForwardArgs& a);
void attention_backward(const AttentionBackwardArgs& a);

}  // namespace cpu
}  // namespace fastfer
