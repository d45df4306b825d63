"""Which autocast precision ``amp="auto"`` means on a device, and why.

On CUDA: bf16 where the GPU supports it, else fp16. On CPU: bf16 only where the CPU computes it natively
(AMX-BF16 or AVX512-BF16: oneDNN then runs bf16 convolutions and matrix products at up to several times the
fp32 speed); elsewhere fp32, because a CPU without those instructions emulates bf16 by converting to fp32 and
back, which is slower than fp32 and loses precision for nothing.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("auto", "bf16", "fp16", "off")


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """The CPU's bf16-related features among ``amx_bf16``, ``avx512_bf16``, ``avx512_fp16``."""
    found = set()
    cpu = getattr(torch, "cpu", None)
    for name, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(name)
        except Exception:  # a torch without the probe's backing code: fall back to /proc/cpuinfo below
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                found |= {f for f in ("amx_bf16", "avx512_bf16", "avx512_fp16") if f in flags}
                break
    except OSError:  # not Linux
        pass
    return frozenset(found)


def cpu_native_bf16() -> bool:
    """True when this CPU has AMX-BF16 or AVX512-BF16."""
    return bool(cpu_features() & {"amx_bf16", "avx512_bf16"})


def resolve_amp(mode: Optional[str], device: torch.device | str) -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` on ``device`` (None: fp32, no autocast).

    ``auto``: bf16 on a CUDA device that supports it, else fp16 there; bf16 on a CPU with native bf16, else
    fp32. ``bf16`` / ``fp16``: as asked. ``off`` / None / ``fp32``: fp32.
    """
    device = torch.device(device)
    if mode in (None, False, "off", "fp32"):
        return None
    if mode in AMP_DTYPES:
        return AMP_DTYPES[mode]
    if mode != "auto":
        raise ValueError(f"amp: expected one of {AMP_MODES}, got {mode!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_native_bf16():
        return torch.bfloat16
    return None


def describe_amp(mode: Optional[str], device: torch.device | str) -> str:
    """One line naming the chosen precision and why, e.g. ``precision: fp32 (amp auto: this CPU has no
    native bf16 (AMX-BF16 / AVX512-BF16))``."""
    device = torch.device(device)
    dtype = resolve_amp(mode, device)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    if mode != "auto":
        return f"precision: {name} (amp {mode or 'off'})"
    if device.type == "cpu":
        why = (f"this CPU has native bf16 ({', '.join(sorted(cpu_features() & {'amx_bf16', 'avx512_bf16'}))})"
               if dtype is not None else "this CPU has no native bf16 (AMX-BF16 / AVX512-BF16)")
    else:
        why = "CUDA device " + ("supports bf16" if dtype is torch.bfloat16 else "without bf16")
    return f"precision: {name} (amp auto: {why})"
