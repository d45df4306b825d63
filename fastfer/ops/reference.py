"""Pure-PyTorch reference of every fastfer op.

This module is the specification of the ops (docs/design.md §2), the ``torch`` backend (CPU fallback) and the oracle
the kernels are tested against. It favours clarity over speed: it materialises what the kernels avoid
(gathered queries, the M×N logits), accumulates in fp32 (fp64 for fp64 inputs) and returns values in the
input dtype, scores in fp32 and indices in int64.

Selection rule shared by every backend: the k highest scores win, ties go to the lower position, NaN ranks
below every number (including -inf), and the chosen positions are returned in ascending order.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

PATCH_SCORES = ("l1", "sum", "l2", "max", "max_abs")
CLS_SCORES = ("logit_sum", "prob_mean")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs, fp64 for fp64 inputs (used by gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_tokens(x: Tensor) -> Tensor:
    """View a (B, C, H, W) map as (B, N=H·W, C) tokens (no copy); (B, N, C) is returned as is."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    return x


def select_topk_positional(scores: Tensor, k: int) -> Tensor:
    """Positions of the k highest scores per row, in ascending positional order.

    scores: (B, N) float. Returns (B, k) int64. Ties go to the lower position; NaN ranks lowest.
    """
    nan = scores.isnan()
    filled = scores.masked_fill(nan, -math.inf)
    # A stable descending sort keeps equal scores in positional order (lower index first) ...
    order = torch.sort(filled, dim=-1, descending=True, stable=True).indices
    # ... and a second stable sort on the NaN flag moves NaN below the real -inf values.
    nan_rank = torch.sort(nan.gather(-1, order).to(torch.int32), dim=-1, stable=True).indices
    order = order.gather(-1, nan_rank)
    return order[:, :k].sort(dim=-1).values


def patch_scores(tokens: Tensor, score: str = "l1") -> Tensor:
    """Per-position score over channels. tokens: (B, N, C) → (B, N) fp32."""
    t = tokens.detach().to(accumulation_dtype(tokens.dtype))
    if score == "l1":
        s = t.abs().sum(-1)
    elif score == "sum":
        s = t.sum(-1)
    elif score == "l2":
        s = t.square().sum(-1)
    elif score == "max":
        s = t.amax(-1)
    elif score == "max_abs":
        s = t.abs().amax(-1)
    else:
        raise ValueError(f"score: expected one of {PATCH_SCORES}, got {score!r}")
    return s.float()


def gather_tokens(tokens: Tensor, index: Tensor, pos: Tensor | None = None) -> Tensor:
    """tokens: (B, N, C), index: (B, k), pos: optional (N, C) → (B, k, C) in tokens.dtype (pos added in the
    accumulation dtype, rounded once)."""
    B, _, C = tokens.shape
    picked = tokens.gather(1, index.unsqueeze(-1).expand(B, index.shape[1], C))
    if pos is None:
        return picked
    acc = accumulation_dtype(tokens.dtype)
    return (picked.to(acc) + pos[index].to(acc)).to(tokens.dtype)


def patch_pool(x: Tensor, k: int, pos: Tensor | None = None, score: str = "l1") -> tuple[Tensor, Tensor, Tensor]:
    """Attentive Patch Pooling (APViT APP).

    x: (B, C, H, W) map (any memory format) or (B, N, C) tokens; k: 1 ≤ k ≤ N; pos: optional (N, C).
    Returns tokens (B, k, C) in x.dtype = x[b, :, index] (+ pos[index]), index (B, k) int64 ascending,
    scores (B, N) fp32. Differentiable w.r.t. x and pos (not through the selection).
    """
    tokens = as_tokens(x)
    scores = patch_scores(tokens, score)
    index = select_topk_positional(scores, k)
    return gather_tokens(tokens, index, pos), index, scores


def patch_pool_backward(
    grad_tokens: Tensor, index: Tensor, x_shape: tuple[int, ...], channels_last: bool, pos_dtype: torch.dtype | None
) -> tuple[Tensor, Tensor | None]:
    """Gradients of :func:`patch_pool`: scatter into the kept positions.

    grad_tokens: (B, k, C); index: (B, k). Returns grad_x of shape x_shape (channels_last memory format when
    asked) and grad_pos (N, C) summed over the batch in pos_dtype (None when pos_dtype is None).
    """
    B, k, C = grad_tokens.shape
    N = x_shape[1] if len(x_shape) == 3 else x_shape[2] * x_shape[3]
    g = grad_tokens.to(accumulation_dtype(grad_tokens.dtype))
    grad_tok = g.new_zeros(B, N, C).scatter_(1, index.unsqueeze(-1).expand(B, k, C), g)
    grad_pos = grad_tok.sum(0).to(pos_dtype) if pos_dtype is not None else None
    grad_tok = grad_tok.to(grad_tokens.dtype)
    if len(x_shape) == 3:
        return grad_tok, grad_pos
    _, Cx, Hx, Wx = x_shape
    grad_x = grad_tok.transpose(1, 2).reshape(B, Cx, Hx, Wx)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return grad_x.contiguous(memory_format=fmt), grad_pos


def cls_scores(q0: Tensor, k: Tensor, scale: float, score: str = "logit_sum") -> Tensor:
    """CLS-row scores reduced over heads.

    q0: (B, H, D) CLS queries; k: (B, H, N, D) keys, both in the accumulation dtype.
    Returns (B, N): Σ_h scale·⟨q0ʰ, kⱼʰ⟩ (``logit_sum``, APViT) or mean_h softmax_j (``prob_mean``, EViT).
    """
    logits = scale * torch.einsum("bhd,bhnd->bhn", q0, k)
    if score == "logit_sum":
        return logits.sum(1)
    if score == "prob_mean":
        return logits.softmax(-1).mean(1)
    raise ValueError(f"score: expected one of {CLS_SCORES}, got {score!r}")


def token_pool_attention(
    qkv: Tensor, keep: int | None, scale: float | None = None, score: str = "logit_sum"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multi-head self-attention that also pools tokens (APViT ATP).

    qkv: (B, N, 3, H, D), token 0 is CLS; keep: non-CLS tokens to keep (1 ≤ keep ≤ N-1) or None.
    Returns
      out (B, M, H·D) in qkv.dtype: attention output of the M = 1 + keep kept queries over all N keys;
      index (B, M) int64: 0 first, then the kept positions ascending (0..N-1 when keep is None);
      cls_scores (B, N) fp32; lse (B, H, M): natural-log log-sum-exp of each kept row, fp32 (fp64 for fp64
      inputs), saved for the backward pass.
    Differentiable w.r.t. qkv (not through the selection).
    """
    B, N, _, H, D = qkv.shape
    scale = D**-0.5 if scale is None else scale
    acc = accumulation_dtype(qkv.dtype)
    q0 = qkv[:, 0, 0].detach().to(acc)  # (B, H, D)
    k = qkv[:, :, 1].detach().to(acc).transpose(1, 2)  # (B, H, N, D)
    scores = cls_scores(q0, k, scale, score).float()
    if keep is None:
        index = torch.arange(N, device=qkv.device).expand(B, N).contiguous()
    else:
        kept = select_topk_positional(scores[:, 1:], keep) + 1
        index = torch.cat([kept.new_zeros(B, 1), kept], dim=1)
    out, lse = attend(qkv, index, scale)
    return out, index, scores, lse


def attend(qkv: Tensor, index: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Attention of the queries at ``index`` over all keys, materialising the (B, H, M, N) logits.

    qkv: (B, N, 3, H, D); index: (B, M). Returns out (B, M, H·D) in qkv.dtype and lse (B, H, M) fp32
    (fp64 for fp64 inputs; natural log). Differentiable w.r.t. qkv.
    """
    B, N, _, H, D = qkv.shape
    M = index.shape[1]
    q, k, v = (t.transpose(1, 2).to(accumulation_dtype(qkv.dtype)) for t in qkv.unbind(2))  # (B, H, N, D)
    q_kept = q.gather(2, index[:, None, :, None].expand(B, H, M, D))
    logits = scale * q_kept @ k.transpose(-1, -2)  # (B, H, M, N)
    lse = torch.logsumexp(logits, dim=-1)
    out = logits.softmax(-1) @ v  # (B, H, M, D)
    lse_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return out.transpose(1, 2).reshape(B, M, H * D).to(qkv.dtype), lse.detach().to(lse_dtype)


def token_pool_attention_backward(
    grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, index: Tensor, scale: float
) -> Tensor:
    """d(qkv) of :func:`token_pool_attention` by the flash-attention identities, recomputing P from the LSE.

    grad_out, out: (B, M, H·D); qkv: (B, N, 3, H, D); lse: (B, H, M); index: (B, M). Returns (B, N, 3, H, D).
    Rows of dropped queries get zero dq.
    """
    B, N, _, H, D = qkv.shape
    M = index.shape[1]
    acc = accumulation_dtype(qkv.dtype)
    q, k, v = (t.transpose(1, 2).to(acc) for t in qkv.unbind(2))  # (B, H, N, D)
    do = grad_out.to(acc).reshape(B, M, H, D).transpose(1, 2)  # (B, H, M, D)
    o = out.to(acc).reshape(B, M, H, D).transpose(1, 2)
    q_kept = q.gather(2, index[:, None, :, None].expand(B, H, M, D))
    p = torch.exp(scale * q_kept @ k.transpose(-1, -2) - lse.to(acc).unsqueeze(-1))  # (B, H, M, N)
    delta = (do * o).sum(-1, keepdim=True)  # (B, H, M, 1)
    ds = p * (do @ v.transpose(-1, -2) - delta)
    dq_kept = scale * ds @ k
    dk = scale * ds.transpose(-1, -2) @ q_kept
    dv = p.transpose(-1, -2) @ do
    dq = torch.zeros_like(q).scatter_(2, index[:, None, :, None].expand(B, H, M, D), dq_kept)
    dqkv = torch.stack([dq, dk, dv], dim=2)  # (B, H, 3, N, D)
    return dqkv.permute(0, 3, 2, 1, 4).contiguous().to(qkv.dtype)
