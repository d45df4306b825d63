// Instruction-set variants of the hot CPU kernels, chosen at run time.
//
// The kernels' *_impl.h files are included once per variant, each time inside its own namespace
// (fastfer::cpu::avx512 / avx2 / portable) with FASTFER_ISA_ATTR set to a GCC target attribute, so one
// binary holds all three and runs on any x86-64 CPU: a prebuilt extension must not assume the build
// machine's CPU. Unlike GCC's target_clones (chosen by the loader, not by us), the choice here is a plain
// value passed down from the bindings, so FASTFER_CPU_KERNELS=portable can force the baseline variant
// (tests run it on this AVX-512 machine). Only functions that carry FASTFER_ISA_ATTR are compiled for the
// wider instruction set; inline helpers without it (common.h, c10) are inlined into them, which GCC allows
// because their (baseline) target is a subset. Nothing of the standard library is compiled with it, so no
// wide instruction leaks into code the portable path runs.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FASTFER_ISA_VARIANTS 1
#include <immintrin.h>
#else
#define FASTFER_ISA_VARIANTS 0
#endif

namespace fastfer {
namespace cpu {

// Scratch rows are padded to 16 fp32 lanes (one zmm): a multiple of every variant's vector width (vec_impl.h).
constexpr int kLanes = 16;

}  // namespace cpu
}  // namespace fastfer
