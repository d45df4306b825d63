"""Triton kernels: attention for the kept query rows only, forward and flash-style backward.

Queries are gathered through ``index`` (B, M) straight from the packed qkv (B, N, 3, H, D) — no permute or
gather copies — and attend to all N keys with an online softmax in base 2 (no N×N matrix in memory). Any
head dim up to 256 works: it is padded to the next power of two inside the kernel with masked loads, and
tails of N and M are masked. The forward saves the natural-log LSE of each kept row; the backward
recomputes P from it (FlashAttention-2 identities):

    P = exp(scale·QKᵀ − lse),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q

dK/dV are computed per key block (looping over the kept queries), dQ per query block (looping over keys):
two launches, no atomics, deterministic. Dropped query rows get dq = 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.triton import interpret_mode_at_import

INTERPRETED = interpret_mode_at_import()
LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(
    qkv_ptr, index_ptr, out_ptr, lse_ptr,
    N, M, H, D,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    qk_scale,  # scale · log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D

    rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
    q = tl.load(head + rows[:, None] * stride_n + offs_d[None, :] * stride_d,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        kv_offs = offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(head + stride_3 + kv_offs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(head + 2 * stride_3 + kv_offs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    out_rows = (b * M + offs_m) * (H * D) + h * D
    tl.store(out_ptr + out_rows[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(lse_ptr + (b * H + h) * M + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=mask_m)


@triton.jit
def _attn_bwd_delta_kernel(
    out_ptr, grad_out_ptr, delta_ptr, M, H, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[b, h, m] = Σ_d dO · O (fp32): the row term of dS."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < M) & (offs_d[None, :] < D)
    offs = ((b * M + offs_m) * (H * D) + h * D)[:, None] + offs_d[None, :]
    o = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + (b * H + h) * M + offs_m, tl.sum(o * do, axis=1), mask=offs_m < M)


@triton.jit
def _attn_bwd_dkdv_kernel(
    qkv_ptr, index_ptr, grad_out_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, M, H, D,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    kv_offs = offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
    kv_mask = mask_n[:, None] & mask_d[None, :]
    k = tl.load(head + stride_3 + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(head + 2 * stride_3 + kv_offs, mask=kv_mask, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(head + rows[:, None] * stride_n + offs_d[None, :] * stride_d, mask=q_mask, other=0.0)
        do_offs = ((b * M + offs_m) * (H * D) + h * D)[:, None] + offs_d[None, :]
        do = tl.load(grad_out_ptr + do_offs, mask=q_mask, other=0.0)
        lse2 = tl.load(lse_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=0.0)

        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse2[None, :])
        p_t = tl.where(mask_n[:, None] & mask_m[None, :], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    dhead = dqkv_ptr + b * (N * 3 * H * D) + h * D
    d_offs = offs_n[:, None] * (3 * H * D) + offs_d[None, :]
    tl.store(dhead + H * D + d_offs, (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dhead + 2 * H * D + d_offs, dv.to(dqkv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    qkv_ptr, index_ptr, grad_out_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, M, H, D,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q_mask = mask_m[:, None] & mask_d[None, :]
    rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
    q = tl.load(head + rows[:, None] * stride_n + offs_d[None, :] * stride_d, mask=q_mask, other=0.0)
    do_offs = ((b * M + offs_m) * (H * D) + h * D)[:, None] + offs_d[None, :]
    do = tl.load(grad_out_ptr + do_offs, mask=q_mask, other=0.0)
    lse2 = tl.load(lse_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        kv_offs = offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(head + stride_3 + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(head + 2 * stride_3 + kv_offs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.exp2(s - lse2[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    dst = dqkv_ptr + b * (N * 3 * H * D) + h * D + rows[:, None] * (3 * H * D) + offs_d[None, :]
    tl.store(dst, (dq * scale).to(dqkv_ptr.dtype.element_ty), mask=q_mask)


def _config(D: int, dtype: torch.dtype) -> dict:
    """Block sizes and launch options. Fixed per head-dim class rather than autotuned: the interpreter would
    run every candidate on CPU, and on GPU the configs below are the standard FlashAttention-2 choices."""
    block_d = max(16, triton.next_power_of_2(D))
    precision = "ieee" if dtype == torch.float32 else "tf32"  # fp32 inputs: no TF32 truncation
    if INTERPRETED:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, DOT_PRECISION=precision, num_warps=4)
    wide = block_d > 128 or dtype == torch.float32
    return dict(
        BLOCK_M=32 if wide and block_d > 64 else 64,
        BLOCK_N=32 if block_d > 128 else 64,
        BLOCK_D=block_d,
        DOT_PRECISION=precision,
        num_warps=8 if block_d > 128 else 4,
        num_stages=2,
    )


def attention_forward(qkv: torch.Tensor, index: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv: (B, N, 3, H, D); index: (B, M). Returns out (B, M, H·D) in qkv.dtype and lse (B, H, M) fp32."""
    B, N, _, H, D = qkv.shape
    M = index.shape[1]
    out = _buffers.empty(B, M, H * D, dtype=qkv.dtype, device=qkv.device)
    lse = _buffers.empty(B, H, M, dtype=torch.float32, device=qkv.device)
    cfg = _config(D, qkv.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](qkv, index, out, lse, N, M, H, D, *qkv.stride(), scale * LOG2E, **cfg)
    return out, lse


def attention_backward(grad_out, qkv, out, lse, index, scale) -> torch.Tensor:
    """grad_out, out: (B, M, H·D) contiguous; lse: (B, H, M); index: (B, M). Returns dqkv (B, N, 3, H, D)."""
    B, N, _, H, D = qkv.shape
    M = index.shape[1]
    out = out.contiguous()
    dqkv = _buffers.empty(B, N, 3, H, D, dtype=qkv.dtype, device=qkv.device)
    if M < N:
        dqkv[:, :, 0].zero_()  # dropped query rows receive no gradient
    delta = _buffers.empty(B, H, M, dtype=torch.float32, device=qkv.device)
    cfg = _config(D, qkv.dtype)
    _attn_bwd_delta_kernel[(triton.cdiv(M, cfg["BLOCK_M"]), B * H)](
        out, grad_out, delta, M, H, D, BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"], num_warps=4
    )
    args = (qkv, index, grad_out, lse, delta, dqkv, N, M, H, D, *qkv.stride(), scale, scale * LOG2E)
    _attn_bwd_dkdv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), B * H)](*args, **cfg)
    _attn_bwd_dq_kernel[(triton.cdiv(M, cfg["BLOCK_M"]), B * H)](*args, **cfg)
    return dqkv
