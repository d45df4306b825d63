// Plain C++ interface of the OpenMP CPU kernels (csrc/cpu/*.cpp); arguments in csrc/shared/op_args.h.
//
// The kernel files include no torch headers (only c10's header-only Half/BFloat16), so they compile in
// seconds; all arithmetic is fp32 whatever the element type.
#pragma once

#include "op_args.h"

namespace fastfer {
namespace cpu {

// Instruction-set variant of the kernels (isa.h). kAuto: the best one this CPU supports. kAmx is
// kAvx512 plus AMX-BF16 tile products and AVX512-BF16 conversions for bf16 inputs of the attention forward
// (amx_impl.h); everything else runs the kAvx512 code.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3, kAuto = 4 };

// Names as FASTFER_CPU_KERNELS spells them: "portable", "avx2", "avx512", "amx", "auto".
const char* isa_name(Isa isa);
// True when the variant is compiled in and this CPU can run it (kPortable: always).
bool isa_supported(Isa isa);
// kAuto → the best supported variant; any other value is returned as it is.
Isa resolve_isa(Isa isa);

void patch_pool_forward(const PatchPoolForwardArgs& a, Isa isa);
void patch_pool_backward(const PatchPoolBackwardArgs& a, Isa isa);
// CLS-row scores, selection (select.index, select.cls_scores) and the attention of the kept rows
// (attend.out, attend.lse) in one pass; attend.index must be select.index.
void token_pool_forward(const ClsSelectArgs& select, const AttentionForwardArgs& attend, Isa isa);
void attention_backward(const AttentionBackwardArgs& a, Isa isa);

// Scores of one image from its CLS-row logits (cls_select.cpp): logits (H, ld) fp32 with lse (H) the
// log-sum-exp of each head's row; writes scores (N) and index (M): 0, then the kept positions ascending
// (all 0..N-1 when !select). scratch: N int32 and N bytes.
void score_and_select(const float* logits, int64_t ld, const float* lse, int64_t H, int64_t N, int64_t M, int score,
                      bool select, float* scores, int64_t* index, int32_t* order, uint8_t* kept);

}  // namespace cpu
}  // namespace fastfer
