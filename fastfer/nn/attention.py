"""Fused multi-head self-attention layers: plain (Attention) and with Attentive Token Pooling.

Parameter names follow timm's ViT (``qkv``, ``proj``), so timm / APViT / FER-former weights load unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastfer import ops


def _check_heads(dim: int, num_heads: int) -> int:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: expected a positive divisor of dim={dim}, got {num_heads}")
    head_dim = dim // num_heads
    if head_dim > 256:
        raise ValueError(f"dim / num_heads: expected a head dim ≤ 256, got {dim}/{num_heads} = {head_dim}")
    return head_dim


def keep_count(n_tokens: int, keep_rate: Optional[float] = None, keep: Optional[int] = None) -> Optional[int]:
    """Non-CLS tokens to keep out of ``n_tokens`` (CLS included), APViT's rule max(int((N-1)·rate), 1);
    None when nothing is dropped."""
    n_patch = n_tokens - 1
    if keep is not None:
        count = min(keep, n_patch)
    elif keep_rate is None or keep_rate >= 1:
        return None
    else:
        count = max(int(n_patch * keep_rate), 1)
    return None if count >= n_patch else count


class Attention(nn.Module):
    """Multi-head self-attention on the fused op (no pooling).

    ``forward(x)``: x (B, N, dim) → (B, N, dim). Attention dropout is not supported by the fused kernel.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0, backend: Optional[str] = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _check_heads(dim, num_heads)
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        out = ops.token_pool_attention(self._qkv(x), None, scale=self.scale, backend=self.backend).out
        return self.proj_drop(self.proj(out))


class TokenPoolAttention(Attention):
    """Attention that also keeps only the highest-scoring tokens (APViT Attentive Token Pooling).

    ``forward(x)``: x (B, N, dim), token 0 = CLS → (y (B, M, dim), index (B, M) or None). ``y`` is the
    projected attention output of the kept queries (CLS first, then kept tokens in positional order);
    ``index`` says which input tokens they are (None when nothing is dropped). The caller gathers its
    residual stream with ``index`` (see :class:`PoolingBlock`). Keep count: ``keep`` if given, else
    max(int((N-1)·keep_rate), 1). After each call ``last_index`` and ``last_scores`` hold the selection.
    """

    def __init__(self, dim: int, num_heads: int = 8, keep_rate: Optional[float] = None, keep: Optional[int] = None,
                 score: str = "logit_sum", qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0, backend: Optional[str] = None):
        super().__init__(dim, num_heads, qkv_bias, scale, proj_bias, proj_drop, backend)
        if keep_rate is not None and not 0 < keep_rate <= 1:
            raise ValueError(f"keep_rate: expected a rate in (0, 1], got {keep_rate}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep: expected a positive int, got {keep!r}")
        self.keep_rate = keep_rate
        self.keep = keep
        self.score = score
        self.last_index: Optional[Tensor] = None
        self.last_scores: Optional[Tensor] = None

    def keep_count(self, n_tokens: int) -> Optional[int]:
        return keep_count(n_tokens, self.keep_rate, self.keep)

    def forward(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        keep = self.keep_count(x.shape[1])
        result = ops.token_pool_attention(self._qkv(x), keep, scale=self.scale, score=self.score, backend=self.backend)
        if not torch.compiler.is_compiling():
            self.last_index, self.last_scores = result.index.detach(), result.cls_scores.detach()
        y = self.proj_drop(self.proj(result.out))
        return y, (result.index if keep is not None else None)

    def extra_repr(self) -> str:
        rule = f"keep={self.keep}" if self.keep is not None else f"keep_rate={self.keep_rate}"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {rule}, score={self.score!r}"
