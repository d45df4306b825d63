"""Triton kernels of Attentive Patch Pooling.

Forward, one program per image, one launch: (1) channel reduction → scores (written to the ``scores``
output), (2) rank-by-comparison top-k → ascending positions, (3) gather the kept positions (+ pos) into
token layout. The map is read by stride, so NCHW, channels_last and (B, N, C) inputs need no copy.

Backward, one launch over (image, position block, channel block): every element of grad_x is written once —
the token gradient where the position was kept (looked up through an inverse index), zero elsewhere — so no
memset pass is needed. grad_pos is the batch sum of the same values (a deterministic torch reduction).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.triton import interpret_mode_at_import
from fastfer.ops.backends.triton.topk import select_topk_positional

INTERPRETED = interpret_mode_at_import()
SCORE_CODES = {"l1": 0, "sum": 1, "l2": 2, "max": 3, "max_abs": 4}


@triton.jit
def _patch_pool_fwd_kernel(
    x_ptr, pos_ptr, tok_ptr, index_ptr, score_ptr,
    N, C, K,
    stride_xb, stride_xn, stride_xc,
    stride_pn, stride_pc,
    SCORE: tl.constexpr, HAS_POS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    x_b = x_ptr + b * stride_xb
    score_b = score_ptr + b * N
    index_b = index_ptr + b * K
    tok_b = tok_ptr + b * K * C

    # 1. scores over channels, accumulated in fp32
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        if SCORE >= 3:
            acc = tl.full([BLOCK_N], float("-inf"), tl.float32)
        else:
            acc = tl.zeros([BLOCK_N], tl.float32)
        n_nan = tl.zeros([BLOCK_N], tl.int32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = mask_n[:, None] & (offs_c[None, :] < C)
            v = tl.load(x_b + offs_n[:, None] * stride_xn + offs_c[None, :] * stride_xc, mask=mask, other=0.0)
            v = v.to(tl.float32)
            if SCORE == 0:
                acc += tl.sum(tl.abs(v), axis=1)
            elif SCORE == 1:
                acc += tl.sum(v, axis=1)
            elif SCORE == 2:
                acc += tl.sum(v * v, axis=1)
            else:
                if SCORE == 4:
                    v = tl.abs(v)
                acc = tl.maximum(acc, tl.max(tl.where(mask, v, float("-inf")), axis=1))
                # GPU max drops NaN; the reference (torch.amax) propagates it, so count NaNs explicitly.
                n_nan += tl.sum((v != v).to(tl.int32), axis=1)
        if SCORE >= 3:
            acc = tl.where(n_nan > 0, float("nan"), acc)
        tl.store(score_b + offs_n, acc, mask=mask_n)

    # 2. top-k positions, ascending (reads the scores this program just wrote)
    tl.debug_barrier()
    select_topk_positional(score_b, index_b, 0, N, K, BLOCK_R)
    tl.debug_barrier()

    # 3. gather the kept positions into (K, C) tokens, adding pos in fp32
    for k0 in range(0, K, BLOCK_N):
        offs_k = k0 + tl.arange(0, BLOCK_N)
        mask_k = offs_k < K
        src = tl.load(index_b + offs_k, mask=mask_k, other=0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = mask_k[:, None] & (offs_c[None, :] < C)
            v = tl.load(x_b + src[:, None] * stride_xn + offs_c[None, :] * stride_xc, mask=mask, other=0.0)
            if HAS_POS:
                p = tl.load(pos_ptr + src[:, None] * stride_pn + offs_c[None, :] * stride_pc, mask=mask, other=0.0)
                v = v.to(tl.float32) + p.to(tl.float32)
            tl.store(tok_b + offs_k[:, None] * C + offs_c[None, :], v.to(tok_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _patch_pool_bwd_kernel(
    grad_tok_ptr, inverse_ptr, grad_x_ptr,
    N, C, K,
    stride_gb, stride_gn, stride_gc,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_n[:, None] < N) & (offs_c[None, :] < C)
    slot = tl.load(inverse_ptr + b * N + offs_n, mask=offs_n < N, other=-1)
    kept = mask & (slot[:, None] >= 0)
    g = tl.load(grad_tok_ptr + (b * K + slot[:, None]) * C + offs_c[None, :], mask=kept, other=0.0)
    dst = grad_x_ptr + b * stride_gb + offs_n[:, None] * stride_gn + offs_c[None, :] * stride_gc
    tl.store(dst, g.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _blocks(C: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(C), 64)
    return (64 if INTERPRETED else 32), block_c


def patch_pool_forward(x, k, pos, score):
    """x: (B, C, H, W) or (B, N, C); returns tokens (B, k, C), index (B, k) int64, scores (B, N) fp32."""
    strides = _buffers.token_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = _buffers.token_strides(x)
    B = x.shape[0]
    if x.dim() == 4:
        C, N = x.shape[1], x.shape[2] * x.shape[3]
    else:
        N, C = x.shape[1], x.shape[2]
    tokens = _buffers.empty(B, k, C, dtype=x.dtype, device=x.device)
    index = _buffers.empty(B, k, dtype=torch.int64, device=x.device)
    scores = _buffers.empty(B, N, dtype=torch.float32, device=x.device)
    block_n, block_c = _blocks(C)
    _patch_pool_fwd_kernel[(B,)](
        x, pos if pos is not None else x, tokens, index, scores,
        N, C, k,
        *strides,
        *(pos.stride() if pos is not None else (0, 0)),
        SCORE=SCORE_CODES[score], HAS_POS=pos is not None,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_R=64,
        num_warps=4,
    )
    return tokens, index, scores


def patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype):
    """grad_tokens: (B, k, C) contiguous; index: (B, k). Returns grad_x (x_shape) and grad_pos (N, C) or None."""
    B, k, C = grad_tokens.shape
    N = x_shape[1] if len(x_shape) == 3 else x_shape[2] * x_shape[3]
    inverse = torch.full((B, N), -1, dtype=torch.int32, device=grad_tokens.device)
    slots = torch.arange(k, dtype=torch.int32, device=grad_tokens.device).expand(B, k)
    inverse.scatter_(1, index, slots)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = _buffers.empty(*x_shape, dtype=grad_tokens.dtype, device=grad_tokens.device)
    grad_x = grad_x.contiguous(memory_format=fmt) if len(x_shape) == 4 else grad_x
    strides = _buffers.token_strides(grad_x)
    block_n, block_c = _blocks(C)
    grid = (B, triton.cdiv(N, block_n), triton.cdiv(C, block_c))
    _patch_pool_bwd_kernel[grid](
        grad_tokens, inverse, grad_x, N, C, k, *strides, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4
    )
    grad_pos = None
    if pos_dtype is not None:
        as_tokens = grad_x.flatten(2).transpose(1, 2) if grad_x.dim() == 4 else grad_x
        grad_pos = as_tokens.sum(0, dtype=torch.float32).to(pos_dtype)
    return grad_x, grad_pos
