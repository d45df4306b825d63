"""Plain-PyTorch compositions the fastfer.nn layers and fastfer.patch are tested against.

Written independently of fastfer (no fastfer imports): materialised attention, ``torch.topk`` selection,
EViT's keep rule and token order. They run in whatever dtype their inputs have, so the same code gives the
fp64 reference and the low-precision PyTorch baseline of the tolerance rule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def keep_tokens(n_tokens: int, rate: float | None, rule: str) -> int | None:
    """Non-CLS tokens kept; None when nothing is dropped (EViT: ceil, APViT: max(int(), 1))."""
    if rate is None or rate >= 1:
        return None
    n = n_tokens - 1
    keep = math.ceil(rate * n) if rule == "evit" else max(int(n * rate), 1)
    return None if keep >= n else keep


def attention_probs(x: Tensor, qkv_w: Tensor, qkv_b: Tensor | None, heads: int, scale: float,
                    q_norm=None, k_norm=None) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, N, C) → (q·kᵀ·scale logits (B, H, N, N), softmax of them, v (B, H, N, D))."""
    B, N, _ = x.shape
    qkv = F.linear(x, qkv_w, qkv_b).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    logits = (q * scale) @ k.transpose(-2, -1)
    return logits, logits.softmax(-1), v


def cls_score(logits: Tensor, probs: Tensor, score: str) -> Tensor:
    """(B, N) CLS-row score: logit_sum = Σ_h logits[:, h, 0], prob_mean = mean_h probs[:, h, 0]."""
    return logits[:, :, 0].sum(1) if score == "logit_sum" else probs[:, :, 0].mean(1)


def select(scores: Tensor, keep: int, ascending: bool) -> Tensor:
    """(B, 1 + keep) token indices: CLS, then the top-``keep`` of scores[:, 1:] (ascending or by score)."""
    top = scores[:, 1:].topk(keep, dim=1, largest=True, sorted=True).indices + 1
    if ascending:
        top = top.sort(dim=1).values
    return torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)


def gather(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def token_pool_attention(x: Tensor, qkv_w: Tensor, qkv_b: Tensor | None, proj_w: Tensor, proj_b: Tensor | None,
                         heads: int, scale: float, keep: int | None, score: str) -> tuple[Tensor, Tensor]:
    """Full attention, then keep CLS + top-``keep`` rows in ascending order. Returns (y (B, M, C), index)."""
    logits, probs, v = attention_probs(x, qkv_w, qkv_b, heads, scale)
    B, _, N, _ = probs.shape
    out = F.linear((probs @ v).transpose(1, 2).reshape(B, N, -1), proj_w, proj_b)
    if keep is None:
        return out, torch.arange(N).expand(B, N)
    index = select(cls_score(logits, probs, score).detach(), keep, ascending=True)
    return gather(out, index), index


def evit_vit_forward(model, images: Tensor, rates: dict[int, float], score: str = "prob_mean",
                     rule: str = "evit") -> tuple[Tensor, list[int]]:
    """EViT-style forward of a timm VisionTransformer (eval mode, no token fusion), from its weights.

    After the attention residual of layer i with a rate, keep CLS + the top tokens by CLS score in
    **descending score order** (EViT's ``topk(sorted=True)``), then run the MLP. Returns (logits, tokens
    leaving each block).
    """
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    counts = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        h = blk.norm1(x)
        logits, probs, v = attention_probs(h, a.qkv.weight, a.qkv.bias, a.num_heads, a.scale, a.q_norm, a.k_norm)
        B, _, N, _ = probs.shape
        o = (probs @ v).transpose(1, 2).reshape(B, N, -1)
        if hasattr(a, "norm"):  # timm's optional scale norm (Identity unless scale_norm=True)
            o = a.norm(o)
        x = x + blk.ls1(a.proj(o))
        keep = keep_tokens(N, rates.get(i), rule)
        if keep is not None:
            x = gather(x, select(cls_score(logits, probs, score), keep, ascending=False))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        counts.append(x.shape[1])
    return model.forward_head(model.norm(x)), counts
