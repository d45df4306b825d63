"""Triton kernels: CLS-row scores over all heads and token selection (``keep`` given).

Two launches, so scoring uses the whole GPU at any batch:

1. ``score`` — grid over images × key blocks. ``logit_sum`` (APViT): Σ_h scale·⟨q₀ʰ, kⱼʰ⟩ is one
   full-width dot of the CLS query row (H·D values) with each key row, written straight to ``cls_scores``.
   ``prob_mean`` (EViT) needs each head's softmax over all keys, so this step writes the per-head logits
   (B, H, N) and the next one normalises.
2. ``select`` — one small program per image: (``prob_mean`` only) each head's softmax row averaged over heads
   into ``cls_scores``, then the rank-by-comparison top-k of positions 1..N-1 (:mod:`.topk`) writes 0 followed
   by the kept positions, ascending.

``keep=None`` needs no selection: the attention forward writes the CLS rows itself (see :mod:`.attention`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.triton import runtime
from fastfer.ops.backends.triton.runtime import config, split_program_id, sync_global_writes
from fastfer.ops.backends.triton.topk import select_topk_positional

INTERPRETED = runtime.INTERPRETED
SCORE_CODES = {"logit_sum": 0, "prob_mean": 1}


@triton.jit
def _cls_score_kernel(
    qkv_ptr, score_ptr, logit_ptr,
    N, H, D,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale,
    PER_HEAD: tl.constexpr, HEADS_PACKED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, pid_n = split_program_id(tl.cdiv(N, BLOCK_N))
    qkv_b = qkv_ptr + b.to(tl.int64) * stride_b
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    keys = qkv_b + stride_3 + offs_n[:, None] * stride_n
    if PER_HEAD:
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        for h in range(0, H):
            q0 = tl.load(qkv_b + h * stride_h + offs_d * stride_d, mask=mask_d, other=0.0).to(tl.float32)
            k = tl.load(keys + h * stride_h + offs_d[None, :] * stride_d, mask=mask_n[:, None] & mask_d[None, :],
                        other=0.0).to(tl.float32)
            logit = tl.sum(k * q0[None, :], axis=1) * scale
            tl.store(logit_ptr + (b * H + h) * N + offs_n, logit, mask=mask_n)
    else:
        HD = H * D
        acc = tl.zeros([BLOCK_N], tl.float32)
        for c0 in range(0, HD, BLOCK_C):
            col = c0 + tl.arange(0, BLOCK_C)
            mask_c = col < HD
            if HEADS_PACKED:  # stride_h == D·stride_d: the H·D values of a row are evenly spaced
                col_off = col * stride_d
            else:
                col_off = (col // D) * stride_h + (col % D) * stride_d
            q0 = tl.load(qkv_b + col_off, mask=mask_c, other=0.0).to(tl.float32)
            k = tl.load(keys + col_off[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(k * q0[None, :], axis=1)
        tl.store(score_ptr + b * N + offs_n, acc * scale, mask=mask_n)


@triton.jit
def _cls_select_kernel(
    score_ptr, logit_ptr, index_ptr,
    N, H, KEEP,
    PROB_MEAN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    score_b = score_ptr + b * N
    index_b = index_ptr + b * (KEEP + 1)
    if PROB_MEAN:
        offs_h = tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        logit_b = logit_ptr + b * H * N + offs_h[:, None] * N
        row_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_H], tl.float32)
        for n0 in range(0, N, BLOCK_N):  # each head's online max and normaliser over all keys
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask = mask_h[:, None] & (offs_n[None, :] < N)
            logit = tl.load(logit_b + offs_n[None, :], mask=mask, other=float("-inf"))
            m_new = tl.maximum(row_max, tl.max(logit, axis=1))
            m_safe = tl.where(mask_h, m_new, 0.0)  # padding heads: no −inf − (−inf)
            row_sum = row_sum * tl.exp(tl.where(mask_h, row_max, 0.0) - m_safe) + \
                tl.sum(tl.exp(logit - m_safe[:, None]), axis=1)
            row_max = m_new
        row_max = tl.where(mask_h, row_max, 0.0)
        row_sum = tl.where(mask_h, row_sum, 1.0)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            logit = tl.load(logit_b + offs_n[None, :], mask=mask_h[:, None] & mask_n[None, :], other=float("-inf"))
            prob = tl.exp(logit - row_max[:, None]) / row_sum[:, None]
            tl.store(score_b + offs_n, tl.sum(prob, axis=0) / H, mask=mask_n)
        sync_global_writes()  # the ranking below reads scores other threads just wrote
    tl.store(index_b, tl.full((), 0, tl.int64))  # CLS is always kept, first
    select_topk_positional(score_b, index_b + 1, 1, N, KEEP, BLOCK_R)


def _score_candidates(_fam):
    return [config(BLOCK_N=32 if INTERPRETED else 16, BLOCK_C=128, num_warps=4, num_stages=2)]


def _select_candidates(_fam):
    return [config(BLOCK_N=64, BLOCK_R=64, num_warps=4, num_stages=1)]


SCORE = runtime.Tunable("cls_score", _cls_score_kernel, _score_candidates, ["N", "H", "D"])
SELECT = runtime.Tunable("cls_select", _cls_select_kernel, _select_candidates, ["N", "KEEP"])


def cls_select(qkv: torch.Tensor, keep: int, scale: float, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv: (B, N, 3, H, D); 1 ≤ keep ≤ N-1. Returns index (B, 1 + keep) int64 and cls_scores (B, N) fp32."""
    B, N, _, H, D = qkv.shape
    per_head = score == "prob_mean"
    index = _buffers.empty(B, 1 + keep, dtype=torch.int64, device=qkv.device)
    scores = _buffers.empty(B, N, dtype=torch.float32, device=qkv.device)
    logits = _buffers.empty(B, H, N, dtype=torch.float32, device=qkv.device) if per_head else scores
    stride_h, stride_d = qkv.stride(3), qkv.stride(4)
    fam = runtime.dtype_family(qkv.dtype)
    with runtime.device_guard(qkv):
        SCORE.launch(
            lambda meta: (B * triton.cdiv(N, meta["BLOCK_N"]),),
            (qkv, scores, logits, N, H, D, *qkv.stride(), scale),
            dict(PER_HEAD=per_head, HEADS_PACKED=H == 1 or stride_h == D * stride_d,
                 BLOCK_D=max(16, triton.next_power_of_2(D))),
            fam,
        )
        SELECT.launch(lambda meta: (B,), (scores, logits, index, N, H, keep),
                      dict(PROB_MEAN=per_head, BLOCK_H=max(2, triton.next_power_of_2(H))), fam)
    return index, scores
