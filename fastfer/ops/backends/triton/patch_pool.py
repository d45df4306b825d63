"""Triton kernels of Attentive Patch Pooling.

Forward, one program per image, one launch: (1) channel reduction → scores (written to the ``scores``
output), (2) rank-by-comparison top-k → ascending positions, (3) gather the kept positions (+ pos) into
token layout. The map is read by stride, so NCHW, channels_last and (B, N, C) inputs need no copy.

Backward, one launch over (image, position block, channel block) in a 1-D grid: every element of grad_x is
written once — the token gradient where the position was kept (its slot found by binary search in the
ascending index), zero elsewhere — so neither a memset nor an inverse-index pass is needed. grad_pos is the
batch sum of the same values (a deterministic torch reduction).
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
    sync_global_writes()
    select_topk_positional(score_b, index_b, 0, N, K, BLOCK_R)
    sync_global_writes()  # the gather reads the index other threads wrote

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
    grad_tok_ptr, index_ptr, grad_x_ptr,
    N, C, K, SEARCH_STEPS,
    stride_gb, stride_gn, stride_gc,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x[b, n, c] = grad_tokens[b, slot, c] where index[b, slot] == n, else 0. index[b] is ascending, so
    each position finds its slot by binary search (no inverse-index pass)."""
    num_c = tl.cdiv(C, BLOCK_C)
    bn, pid_c = split_program_id(num_c)
    num_n = tl.cdiv(N, BLOCK_N)
    b = (bn // num_n).to(tl.int64)
    offs_n = (bn % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    index_b = index_ptr + b * K
    lo = tl.zeros([BLOCK_N], tl.int32)
    hi = tl.full([BLOCK_N], 0, tl.int32) + K
    for _ in range(0, SEARCH_STEPS):  # first slot whose position is ≥ n
        mid = (lo + hi) // 2
        pos = tl.load(index_b + mid, mask=mid < K, other=N)
        right = pos < offs_n
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    found = tl.load(index_b + lo, mask=mask_n & (lo < K), other=-1) == offs_n
    mask = mask_n[:, None] & (offs_c[None, :] < C)
    g = tl.load(grad_tok_ptr + (b * K + lo[:, None]) * C + offs_c[None, :], mask=mask & found[:, None], other=0.0)
    dst = grad_x_ptr + b * stride_gb + offs_n[:, None] * stride_gn + offs_c[None, :] * stride_gc
    tl.store(dst, g.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _fwd_candidates(_fam):
    return [config(BLOCK_N=64 if INTERPRETED else 32, BLOCK_C=64, BLOCK_R=64, num_warps=4, num_stages=2)]


def _bwd_candidates(_fam):
    return [config(BLOCK_N=64 if INTERPRETED else 32, BLOCK_C=64, num_warps=4, num_stages=1)]


FORWARD = runtime.Tunable("patch_pool_fwd", _patch_pool_fwd_kernel, _fwd_candidates, ["N", "C", "K"])
BACKWARD = runtime.Tunable("patch_pool_bwd", _patch_pool_bwd_kernel, _bwd_candidates, ["N", "C", "K"])


def _dims(x) -> tuple[int, int]:
    return (x.shape[2] * x.shape[3], x.shape[1]) if x.dim() == 4 else (x.shape[1], x.shape[2])


def patch_pool_forward(x, k, pos, score):
    """x: (B, C, H, W) or (B, N, C); returns tokens (B, k, C), index (B, k) int64, scores (B, N) fp32."""
    strides = _buffers.token_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = _buffers.token_strides(x)
    B = x.shape[0]
    N, C = _dims(x)
    tokens = _buffers.empty(B, k, C, dtype=x.dtype, device=x.device)
    index = _buffers.empty(B, k, dtype=torch.int64, device=x.device)
    scores = _buffers.empty(B, N, dtype=torch.float32, device=x.device)
    args = (x, pos if pos is not None else x, tokens, index, scores, N, C, k, *strides,
            *(pos.stride() if pos is not None else (0, 0)))
    with runtime.device_guard(x):
        FORWARD.launch(lambda meta: (B,), args, dict(SCORE=SCORE_CODES[score], HAS_POS=pos is not None),
                       runtime.dtype_family(x.dtype))
    return tokens, index, scores


def patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype):
    """grad_tokens: (B, k, C) contiguous; index: (B, k) ascending. Returns grad_x (x_shape) and grad_pos (N, C)
    or None."""
    B, k, C = grad_tokens.shape
    N = x_shape[1] if len(x_shape) == 3 else x_shape[2] * x_shape[3]
    index = index.contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = _buffers.empty(*x_shape, dtype=grad_tokens.dtype, device=grad_tokens.device)
    grad_x = grad_x.contiguous(memory_format=fmt) if len(x_shape) == 4 else grad_x
    strides = _buffers.token_strides(grad_x)
    grid = lambda meta: (B * triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(C, meta["BLOCK_C"]),)  # noqa: E731
    with runtime.device_guard(grad_tokens):
        BACKWARD.launch(grid, (grad_tokens, index, grad_x, N, C, k, k.bit_length(), *strides), {},
                        runtime.dtype_family(grad_tokens.dtype))
    grad_pos = None
    if pos_dtype is not None:
        as_tokens = grad_x.flatten(2).transpose(1, 2) if grad_x.dim() == 4 else grad_x
        grad_pos = as_tokens.sum(0, dtype=torch.float32).to(pos_dtype)
    return grad_x, grad_pos
