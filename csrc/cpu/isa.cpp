// Run-time choice of the kernels' instruction-set variant (isa.h): what this CPU supports.
#include "common.h"

#if FASTFER_ISA_VARIANTS
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastfer {
namespace cpu {

#if FASTFER_ISA_VARIANTS
namespace {
// Linux hands out the AMX tile state (8 KB per thread, saved on context switches) only to processes that
// ask for it; until then a tile instruction faults. Asked once per process (oneDNN asks the same way; a
// second request is a no-op). A kernel without the request (before Linux 5.16) means no AMX variant.
bool amx_permitted() {
  static const bool permitted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}
}  // namespace
#endif

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAmx: return "amx";
    default: return "auto";
  }
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return true;
#if FASTFER_ISA_VARIANTS
    // The variants are compiled for arch=x86-64-v3 / x86-64-v4: every feature of the level must be there.
    case Isa::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
             __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("movbe") &&
             __builtin_cpu_supports("popcnt");
    case Isa::kAvx512:
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
    case Isa::kAmx:
      return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && amx_permitted();
#endif
    default: return false;
  }
}

Isa resolve_isa(Isa isa) {
  if (isa != Isa::kAuto) return isa;
  if (isa_supported(Isa::kAmx)) return Isa::kAmx;
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kPortable;
}

}  // namespace cpu
}  // namespace fastfer
