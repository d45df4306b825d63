"""The baselines the fused ops are measured against (docs/design.md §5), written the way the official code computes.

- ``atp_eager``: APViT's ``PoolingAttention`` (and EViT's attention): the full (B, H, N, N) logits, softmax,
  attention for **all** N queries, the CLS row of the logits (or of the probabilities), top-k, sort, gather.
- ``atp_sdpa``: ``F.scaled_dot_product_attention`` for all N queries, a separate CLS-row product for the
  scores, top-k, sort, gather of the output rows — the best one can do with stock PyTorch ops.
- ``app_eager``: APViT's APP: L1 score over channels, pos-embed added to all N tokens, top-k, sort, gather.

Each returns what the fastfer op returns: ATP ``(out (B, M, H·D), index (B, M), cls_scores (B, N))``;
APP ``(tokens (B, k, C), index (B, k), scores (B, N))``. They work in the input dtype like the official code
(no fp32 up-cast), so at fp16/bf16 their scores, and hence a near-tie selection, may differ from the fp32
reference; :mod:`bench._checks` compares accordingly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _select(cls_row: Tensor, keep: int) -> Tensor:
    """cls_row (B, N) with column 0 = CLS → index (B, 1 + keep): 0, then the top-`keep` of 1..N-1 ascending."""
    kept = cls_row[:, 1:].topk(keep, dim=-1, sorted=False).indices.sort(dim=-1).values + 1
    return torch.cat([kept.new_zeros(kept.shape[0], 1), kept], dim=1)


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, C), index (B, M) → (B, M, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def atp_eager(qkv: Tensor, keep: int | None, scale: float, score: str = "logit_sum") -> tuple[Tensor, Tensor, Tensor]:
    """Official-style ATP. qkv (B, N, 3, H, D) → out (B, M, H·D), index (B, M), cls_scores (B, N) fp32."""
    B, N, _, H, D = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D) views, as the official reshape+permute
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N) materialised
    if score == "logit_sum":
        cls_row = attn[:, :, 0, :].sum(1)  # APViT: pre-softmax CLS row summed over heads
    attn = attn.softmax(dim=-1)
    if score == "prob_mean":
        cls_row = attn[:, :, 0, :].mean(1)  # EViT: post-softmax CLS row averaged over heads
    x = (attn @ v).transpose(1, 2).reshape(B, N, H * D)  # all N queries
    if keep is None:
        index = torch.arange(N, device=qkv.device).expand(B, N)
        return x, index, cls_row.float()
    index = _select(cls_row, keep)
    return _gather_rows(x, index), index, cls_row.float()


def atp_sdpa(qkv: Tensor, keep: int | None, scale: float, score: str = "logit_sum") -> tuple[Tensor, Tensor, Tensor]:
    """SDPA for all N queries + a separate CLS-row product + top-k + sort + gather (same outputs as eager)."""
    B, N, _, H, D = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D), last dim contiguous: SDPA reads in place
    with torch.no_grad():  # the selection is not differentiable in any implementation
        if score == "logit_sum":
            # Σ_h scale·⟨q0ʰ, kⱼʰ⟩ is one full-width product: (B, 1, H·D) @ (B, H·D, N).
            q0 = qkv[:, 0, 0].reshape(B, 1, H * D)
            keys = qkv[:, :, 1].reshape(B, N, H * D)
            cls_row = (q0 @ keys.transpose(1, 2)).squeeze(1) * scale
        else:
            cls_row = ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(-1)[:, :, 0].mean(1)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, N, D)
    if keep is None:
        return out.transpose(1, 2).reshape(B, N, H * D), torch.arange(N, device=qkv.device).expand(B, N), cls_row.float()
    index = _select(cls_row, keep)
    rows = out.transpose(1, 2)[torch.arange(B, device=qkv.device)[:, None], index]  # (B, M, H, D), one copy
    return rows.reshape(B, index.shape[1], H * D), index, cls_row.float()


def app_eager(x: Tensor, k: int, pos: Tensor | None, score: str = "l1") -> tuple[Tensor, Tensor, Tensor]:
    """Official-style APP. x (B, C, H, W), pos (N, C) → tokens (B, k, C), index (B, k), scores (B, N) fp32."""
    if score != "l1":
        raise ValueError(f"score: the eager APP baseline implements APViT's 'l1' only, got {score!r}")
    scores = x.abs().sum(dim=1).flatten(1)  # (B, N), in x.dtype as the official code
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    if pos is not None:
        tokens = tokens + pos  # official: pos-embed added to all N tokens before selection
    index = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return _gather_rows(tokens, index), index, scores.float()
