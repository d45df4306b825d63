"""Fused multi-head self-attention layers: plain (Attention) and with Attentive Token Pooling.

Parameter names follow timm's ViT (``qkv``, ``proj``), so timm / APViT / FER-former weights load unchanged.
The op calls are FX leaf functions (``torch.fx.wrap`` below), and the number of tokens to keep is computed by
a leaf too, so ``torch.fx.symbolic_trace`` of a model built from these layers records the fused ops as single
nodes instead of failing on data-dependent shapes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
from torch import Tensor, nn

from fastfer.ops import MAX_HEAD_DIM, token_pool_attention
from fastfer.ops.reference import CLS_SCORES

KEEP_RULES = ("apvit", "evit")


def _check_heads(dim: int, num_heads: int) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: expected a positive divisor of dim={dim}, got {num_heads!r}")
    head_dim = dim // num_heads
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"dim / num_heads: expected a head dim ≤ {MAX_HEAD_DIM}, got {dim}/{num_heads} = {head_dim}")
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


def keep_for(x: Tensor, keep_rate: Optional[float], keep: Optional[int], rule: str) -> Optional[int]:
    """:func:`keep_count` for the tokens ``x`` (B, N, C); an FX leaf, so tracing never branches on N."""
    return keep_count(x.shape[1], keep_rate, keep, rule)


# FX: record these as single call nodes (their arguments' shapes are only known when the graph runs).
torch.fx.wrap("token_pool_attention")
torch.fx.wrap("keep_for")


class Attention(nn.Module):
    """Multi-head self-attention on the fused op (no pooling).

    ``forward(x)``: x (B, N, dim) → (B, N, dim). Attention dropout is not supported by the fused kernel.
    After each call ``last_scores`` (B, N) fp32 holds the CLS row (token 0) summed over heads before the
    softmax (detached; not recorded while torch.compile traces).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        self._init_heads(dim, num_heads, scale)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _init_heads(self, dim: int, num_heads: int, scale: Optional[float]) -> None:
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
        self.last_scores: Optional[Tensor] = None

    def _qkv(self, x: Tensor) -> Tensor:
        """x (B, N, C) → packed qkv (B, N, 3, H, D), the layout the op reads in place."""
        return self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))

    def _project(self, out: Tensor) -> Tensor:
        """Attention output (B, M, H·D) → (B, M, dim_out)."""
        return self.proj_drop(self.proj(out))

    def forward(self, x: Tensor) -> Tensor:
        result = token_pool_attention(self._qkv(x), None, scale=self.scale)
        self._record(result)
        return self._project(result.out)

    def _record(self, result) -> None:
        """Keep the last selection for visualisation (eager only: not while compiling or FX tracing)."""
        if not (torch.compiler.is_compiling() or isinstance(result.cls_scores, torch.fx.Proxy)):
            self.last_scores = result.cls_scores.detach()
            if hasattr(self, "last_index"):
                self.last_index = result.index.detach()

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}"


class TokenPoolAttention(Attention):
    """Attention that also keeps only the highest-scoring tokens (APViT Attentive Token Pooling).

    ``forward(x)``: x (B, N, dim), token 0 = CLS → (y (B, M, dim), index (B, M)). ``y`` is the projected
    attention output of the kept queries (CLS first, then kept tokens in positional order); ``index`` says
    which input tokens they are (0..N-1 when nothing is dropped). The caller gathers its residual stream with
    ``index`` when :attr:`pools` (see :class:`PoolingBlock`). Keep count: ``keep`` if given, else from
    ``keep_rate`` by ``keep_rule`` (:func:`keep_count`: ``apvit`` max(int((N-1)·rate), 1), ``evit``
    ceil(rate·(N-1))). ``score``: ``logit_sum`` (APViT, pre-softmax CLS logits summed over heads) or
    ``prob_mean`` (EViT, CLS attention probabilities averaged over heads). After each call ``last_index``
    (B, M) and ``last_scores`` (B, N) hold the selection (detached; not recorded under torch.compile).
    """

    def __init__(self, dim: int, num_heads: int = 8, keep_rate: Optional[float] = None, keep: Optional[int] = None,
                 score: str = "logit_sum", qkv_bias: bool = False, scale: Optional[float] = None,
                 proj_bias: bool = True, proj_drop: float = 0.0, keep_rule: str = "apvit"):
        super().__init__(dim, num_heads, qkv_bias, scale, proj_bias, proj_drop)
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

    @property
    def pools(self) -> bool:
        """Whether this layer may drop tokens (a keep count or a rate below 1); decided at construction."""
        return self.keep is not None or (self.keep_rate is not None and self.keep_rate < 1)

    def keep_count(self, n_tokens: int) -> Optional[int]:
        return keep_count(n_tokens, self.keep_rate, self.keep, self.keep_rule)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        keep = keep_for(x, self.keep_rate, self.keep, self.keep_rule) if self.pools else None
        result = token_pool_attention(self._qkv(x), keep, scale=self.scale, score=self.score)
        self._record(result)
        return self._project(result.out), result.index

    def extra_repr(self) -> str:
        if self.keep is not None:
            rule = f"keep={self.keep}"
        elif self.keep_rate is None:
            rule = "no pooling"
        else:
            rule = f"keep_rate={self.keep_rate} ({self.keep_rule})"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {rule}, score={self.score!r}"
