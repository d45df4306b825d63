"""Functional forms of fastfer's layers (``fastfer.functional``), for models that keep their own weights.

- :func:`patch_pool` — Attentive Patch Pooling (alias of :func:`fastfer.ops.patch_pool`).
- :func:`token_pool_attention` — attention + CLS scores + top-k pooling (alias of the op).
- :func:`attention` — plain fused multi-head self-attention on packed qkv.
- :func:`gather_tokens`, :func:`keep_count`, :func:`kept_positions` — the bookkeeping around pooling.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fastfer.nn.attention import keep_count
from fastfer.nn.block import gather_tokens, kept_positions
from fastfer.ops import patch_pool, token_pool_attention


def attention(qkv: Tensor, *, scale: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Fused multi-head self-attention over all tokens.

    Args:
        qkv: (B, N, 3, H, D) — the qkv Linear output reshaped, read in place. D ≤ 256.
        scale: logit scale, default D**-0.5.
        backend: ``triton``, ``cuda``, ``cpu``, ``torch`` for this call (default: pinned, else automatic).

    Returns:
        (B, N, H·D) attention output in qkv.dtype, token layout, ready for the output projection.
    """
    return token_pool_attention(qkv, None, scale=scale, backend=backend).out


__all__ = ["attention", "gather_tokens", "keep_count", "kept_positions", "patch_pool", "token_pool_attention"]
