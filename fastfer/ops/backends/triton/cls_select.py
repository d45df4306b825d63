"""Triton kernel: CLS-row scores over all heads + token selection, one program per image.

For every head the CLS query q₀ʰ is dotted with every key (one 1×D·D×N product per head; no N×N matrix).
``logit_sum`` (APViT) accumulates scale·⟨q₀ʰ, kⱼʰ⟩ over heads; ``prob_mean`` (EViT) first finds each head's
row maximum and normaliser, then averages the softmax row over heads. The scores go to the ``cls_scores``
output; the same program then ranks positions 1..N-1 and writes 0 followed by the kept positions, ascending.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.triton import interpret_mode_at_import
from fastfer.ops.backends.triton.topk import select_topk_positional

INTERPRETED = interpret_mode_at_import()
SCORE_CODES = {"logit_sum": 0, "prob_mean": 1}


@triton.jit
def _cls_logits(head_ptr, offs_n, mask_n, offs_d, mask_d, stride_n, stride_d, stride_3, scale):
    """scale·⟨q₀, kⱼ⟩ for the positions offs_n of one head (fp32); head_ptr points at qkv[b, 0, 0, h, 0]."""
    q0 = tl.load(head_ptr + offs_d * stride_d, mask=mask_d, other=0.0).to(tl.float32)
    k = tl.load(
        head_ptr + stride_3 + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
        mask=mask_n[:, None] & mask_d[None, :],
        other=0.0,
    ).to(tl.float32)
    return tl.sum(k * q0[None, :], axis=1) * scale


@triton.jit
def _cls_select_kernel(
    qkv_ptr, score_ptr, index_ptr,
    N, H, D, KEEP, M,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale,
    SCORE: tl.constexpr, SELECT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    qkv_b = qkv_ptr + b * stride_b
    score_b = score_ptr + b * N
    index_b = index_ptr + b * M
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_h = tl.arange(0, BLOCK_H)

    if SCORE == 1:
        # per-head softmax statistics of the CLS row (online max / sum over key blocks)
        row_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_H], tl.float32)
        for h in range(0, H):
            m = tl.full((), float("-inf"), tl.float32)
            s = tl.full((), 0.0, tl.float32)
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask_n = offs_n < N
                logit = _cls_logits(qkv_b + h * stride_h, offs_n, mask_n, offs_d, mask_d,
                                    stride_n, stride_d, stride_3, scale)
                logit = tl.where(mask_n, logit, float("-inf"))
                m_new = tl.maximum(m, tl.max(logit, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logit - m_new), axis=0)
                m = m_new
            row_max = tl.where(offs_h == h, m, row_max)
            row_sum = tl.where(offs_h == h, s, row_sum)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros([BLOCK_N], tl.float32)
        for h in range(0, H):
            logit = _cls_logits(qkv_b + h * stride_h, offs_n, mask_n, offs_d, mask_d,
                                stride_n, stride_d, stride_3, scale)
            if SCORE == 0:
                acc += logit
            else:
                m = tl.sum(tl.where(offs_h == h, row_max, 0.0), axis=0)
                s = tl.sum(tl.where(offs_h == h, row_sum, 0.0), axis=0)
                acc += tl.exp(logit - m) / s
        if SCORE == 1:
            acc = acc / H
        tl.store(score_b + offs_n, acc, mask=mask_n)

    if SELECT:
        tl.debug_barrier()
        tl.store(index_b, tl.full((), 0, tl.int64))  # CLS is always kept, first
        select_topk_positional(score_b, index_b + 1, 1, N, KEEP, BLOCK_R)
    else:
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            tl.store(index_b + offs_n, offs_n.to(tl.int64), mask=offs_n < N)


def cls_select(qkv: torch.Tensor, keep: int | None, scale: float, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv: (B, N, 3, H, D). Returns index (B, M) int64 and cls_scores (B, N) fp32."""
    B, N, _, H, D = qkv.shape
    M = N if keep is None else 1 + keep
    index = _buffers.empty(B, M, dtype=torch.int64, device=qkv.device)
    scores = _buffers.empty(B, N, dtype=torch.float32, device=qkv.device)
    _cls_select_kernel[(B,)](
        qkv, scores, index,
        N, H, D, 0 if keep is None else keep, M,
        *qkv.stride(),
        scale,
        SCORE=SCORE_CODES[score], SELECT=keep is not None,
        BLOCK_N=64,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_H=max(2, triton.next_power_of_2(H)),
        BLOCK_R=64,
        num_warps=4,
    )
    return index, scores
