"""Output allocation for kernel launchers.

With ``FASTFER_POISON=1`` (the test suite sets it) every buffer a kernel is supposed to overwrite starts as
NaN (floats) or -1 (integers), so an element a kernel forgets to write shows up in the comparison with the
reference instead of passing by luck with whatever memory held.
"""
from __future__ import annotations

import os

import torch


def poisoning() -> bool:
    return os.environ.get("FASTFER_POISON", "0") == "1"


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if poisoning():
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out


def empty_like(t: torch.Tensor) -> torch.Tensor:
    return empty(*t.shape, dtype=t.dtype, device=t.device)
