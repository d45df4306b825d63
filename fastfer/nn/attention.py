"""Fused multi-head self-attention layers: plain (Attention) and with Attentive Token Pooling.

Parameter names follow timm's ViT (``qkv``, ``proj``), so timm / APViT / FER-former weights load unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from fastfer import ops
from fastfer.ops.reference import CLS_SCORES

KEEP_RULES = ("apvit", "evit")


def _check_heads(dim: int, num_heads: int) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: expected a positive divisor of dim={dim}, got {num_heads!r}")
    head_dim = dim // num_heads
    if head_dim > 256:
        raise ValueError(f"dim / num_heads: expected a head dim ≤ 256, got {dim}/{num_heads} = {head_dim}")
    return head_dim


def check_keep_rate(keep_rate: Optional[float], name: str = "keep_rate") -> None:
    """Raise a ValueError naming ``name`` unless keep_rate is None or a number in (0, 1]."""
    if keep_rate is None:
        return
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)) or not 0 < keep_rate <= 1:
        raise ValueError(f"{name}: expected a rate in (0, 1] (fraction of non-CLS tokens kept), got {keep_rate!r}")


def keep_count(n_tokens: int, keep_rate: Optional[float] = None, keep: Optional[int] = None,
               rule: str = "apvit") -> Optional[int]:
    """Non-CLS tokens to keep out of ``n_tokens`` (CLS included); None when nothing is dropped.

    ``keep`` (an exact count) wins over ``keep_rate``. Rules for a rate r over n = N-1 patch tokens:
    ``apvit`` max(int(n·r), 1) (APViT, the default); ``evit`` ceil(r·n) (EViT's ``math.ceil``).
    """
    n_patch = n_tokens - 1
    if keep is not None:
        count = min(keep, n_patch)
    elif keep_rate is None or keep_rate >= 1:
        return None
    elif rule == "apvit":
        count = max(int(n_patch * keep_rate), 1)
    elif rule == "evit":
        count = math.ceil(keep_rate * n_patch)
    else:
        raise ValueError(f"rule: expected one of {KEEP_RULES}, got {rule!r}")
    return None if count >= n_patch else count


class Attention(nn.Module):
    """Multi-head self-attention on the fused op (no pooling).

    ``forward(x)``: x (B, N, dim) → (B, N, dim). Attention dropout is not supported by the fused kernel.
    After each call ``last_scores`` (B, N) fp32 holds the CLS row (token 0) summed over heads before the
    softmax (detached; not recorded while torch.compile traces).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0, backend: Optional[str] = None):
        super().__init__()
        self._init_heads(dim, num_heads, scale, backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _init_heads(self, dim: int, num_heads: int, scale: Optional[float], backend: Optional[str]) -> None:
        """Head geometry and settings, without creating parameters (shared with the timm drop-ins)."""
        self.num_heads = num_heads
        self.head_dim = _check_heads(dim, num_heads)
        if scale is not None:
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                scale = math.nan
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"scale: expected a positive finite number or None (head_dim**-0.5), got {scale!r}")
        self.scale = self.head_dim**-0.5 if scale is None else scale
        self.backend = backend
        self.last_scores: Optional[Tensor] = None

    def _qkv(self, x: Tensor) -> Tensor:
        """x (B, N, C) → packed qkv (B, N, 3, H, D), the layout the op reads in place."""
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)

    def _project(self, out: Tensor) -> Tensor:
        """Attention output (B, M, H·D) → (B, M, dim_out)."""
        return self.proj_drop(self.proj(out))

    def forward(self, x: Tensor) -> Tensor:
        result = ops.token_pool_attention(self._qkv(x), None, scale=self.scale, backend=self.backend)
        if not torch.compiler.is_compiling():
            self.last_scores = result.cls_scores.detach()
        return self._project(result.out)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}" + (
            f", backend={self.backend!r}" if self.backend else "")


class TokenPoolAttention(Attention):
    """Attention that also keeps only the highest-scoring tokens (APViT Attentive Token Pooling).

    ``forward(x)``: x (B, N, dim), token 0 = CLS → (y (B, M, dim), index (B, M) or None). ``y`` is the
    projected attention output of the kept queries (CLS first, then kept tokens in positional order);
    ``index`` says which input tokens they are (None when nothing is dropped). The caller gathers its
    residual stream with ``index`` (see :class:`PoolingBlock`). Keep count: ``keep`` if given, else from
    ``keep_rate`` by ``keep_rule`` (:func:`keep_count`: ``apvit`` max(int((N-1)·rate), 1), ``evit``
    ceil(rate·(N-1))). ``score``: ``logit_sum`` (APViT, pre-softmax CLS logits summed over heads) or
    ``prob_mean`` (EViT, CLS attention probabilities averaged over heads). After each call ``last_index``
    (B, M) and ``last_scores`` (B, N) hold the selection (detached; not recorded under torch.compile).
    """

    def __init__(self, dim: int, num_heads: int = 8, keep_rate: Optional[float] = None, keep: Optional[int] = None,
                 score: str = "logit_sum", qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0, backend: Optional[str] = None,
                 keep_rule: str = "apvit"):
        super().__init__(dim, num_heads, qkv_bias, scale, proj_bias, proj_drop, backend)
        self._init_pooling(keep_rate, keep, score, keep_rule)

    def _init_pooling(self, keep_rate: Optional[float], keep: Optional[int], score: str, keep_rule: str) -> None:
        check_keep_rate(keep_rate)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep: expected a positive int, got {keep!r}")
        if score not in CLS_SCORES:
            raise ValueError(f"score: expected one of {CLS_SCORES}, got {score!r}")
        if keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule: expected one of {KEEP_RULES}, got {keep_rule!r}")
        self.keep_rate = keep_rate
        self.keep = keep
        self.score = score
        self.keep_rule = keep_rule
        self.last_index: Optional[Tensor] = None

    def keep_count(self, n_tokens: int) -> Optional[int]:
        return keep_count(n_tokens, self.keep_rate, self.keep, self.keep_rule)

    def forward(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        keep = self.keep_count(x.shape[1])
        result = ops.token_pool_attention(self._qkv(x), keep, scale=self.scale, score=self.score, backend=self.backend)
        if not torch.compiler.is_compiling():
            self.last_index, self.last_scores = result.index.detach(), result.cls_scores.detach()
        return self._project(result.out), (result.index if keep is not None else None)

    def extra_repr(self) -> str:
        if self.keep is not None:
            rule = f"keep={self.keep}"
        elif self.keep_rate is None:
            rule = "no pooling"
        else:
            rule = f"keep_rate={self.keep_rate} ({self.keep_rule})"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {rule}, score={self.score!r}" + (
            f", backend={self.backend!r}" if self.backend else "")
