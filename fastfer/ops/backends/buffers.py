"""Buffers as kernel launchers see them: output allocation and the strides of a feature map read as tokens.

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


def token_strides(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(batch, position, channel) element strides of a (B, C, H, W) map or (B, N, C) tokens seen as (B, N, C);
    None when H and W cannot be walked with one position stride (the caller then makes a copy)."""
    if x.dim() == 3:
        return x.stride(0), x.stride(1), x.stride(2)
    _, _, H, W = x.shape
    sb, sc, sh, sw = x.stride()
    if H > 1 and W > 1 and sh != W * sw:
        return None
    return sb, (sw if W > 1 else sh), sc
