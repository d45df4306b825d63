"""Triton kernels: attention for the kept query rows only, forward and flash-style backward.

Queries are gathered through ``index`` (B, M) straight from the packed qkv (B, N, 3, H, D) — no permute or
gather copies — and attend to all N keys with an online softmax in base 2 (no N×N matrix in memory). The
forward saves the natural-log LSE of each kept row; the backward recomputes P from it (FlashAttention-2):

    P = exp(scale·QKᵀ − lse),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q

Head dim: the D columns are covered by two power-of-two parts, ``BLOCK_D0`` (the largest power of two ≤ D)
and ``BLOCK_D1`` (the rest, rounded up; 0 when D is a power of two), so D = 96 runs as 64 + 32 dots with no
padded columns instead of one 128-wide dot (25 % of its work on zeros). Tails of N, M and D are masked.

fp32 inputs use TF32 tensor-core dots when PyTorch allows TF32 (``torch.backends.cuda.matmul.allow_tf32``)
and 3×TF32 (``tf32x3``: fp32-level accuracy, still tensor cores) otherwise; plain ``ieee`` dots run on CUDA
cores and keep whole operand rows in registers, which spilled kilobytes per thread at D = 96.

Launches (1-D grids, any B·H; block sizes autotuned on GPU, see :mod:`.runtime`):
- forward: one kernel over (b·h, query block). With ``keep=None`` it also writes each head's CLS-row logits
  (or probabilities) from the tile it already computes, so no separate scoring launch is needed.
- backward: ``prep`` (delta = rowsum(dO ∘ O) and zeros into dq of every position, which the kept rows then
  overwrite — no separate memset), ``dkdv`` per key block (loops over kept queries) and ``dq`` per query block
  (loops over keys). No atomics: deterministic.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.triton import runtime
from fastfer.ops.backends.triton.runtime import config, split_program_id, sync_global_writes

INTERPRETED = runtime.INTERPRETED
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
CLS_NONE, CLS_LOGITS, CLS_PROBS = 0, 1, 2


@triton.jit
def _load_tile(base, rows, row_mask, stride_n, stride_d, offs_d, D):
    """(len(rows), len(offs_d)) tile of one head: base[rows·stride_n + offs_d·stride_d], zero outside."""
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    return tl.load(base + rows[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit(do_not_specialize=["BH_BUCKET"])
def _attn_fwd_kernel(
    qkv_ptr, index_ptr, out_ptr, lse_ptr, cls_ptr,
    N, M, H, D, BH_BUCKET,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    qk_scale,  # scale · log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    DOT_PRECISION: tl.constexpr, CLS_ROW: tl.constexpr,
):
    bh, pid_m = split_program_id(tl.cdiv(M, BLOCK_M))
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d0 = tl.arange(0, BLOCK_D0)

    if CLS_ROW != 0:  # keep=None: every position is a query, in order; this launch writes the index
        rows = offs_m
        if h == 0:
            tl.store(index_ptr + b * M + offs_m, offs_m.to(tl.int64), mask=mask_m)
    else:
        rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
    q0 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d0, D)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], tl.float32)
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q1 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d1, D)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    cls_row = cls_ptr + (b * H + h) * N
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k0 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            k1 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        if CLS_ROW != 0:
            if pid_m == 0:  # query row 0 is the CLS token (index[b, 0] == 0): keep its logits
                row0 = tl.sum(tl.where(offs_m[:, None] == 0, s, 0.0), axis=0)
                if CLS_ROW == 1:
                    row0 = row0 * 0.6931471805599453  # base-2 → natural logits scale·q₀·kⱼ
                tl.store(cls_row + offs_n, row0, mask=mask_n)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v0 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
        acc0 = tl.dot(p.to(v0.dtype), v0, acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            v1 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
            acc1 = tl.dot(p.to(v1.dtype), v1, acc1 * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    out_rows = (b * M + offs_m) * (H * D) + h * D
    out_mask = mask_m[:, None]
    tl.store(out_ptr + out_rows[:, None] + offs_d0[None, :], (acc0 / l_i[:, None]).to(out_ptr.dtype.element_ty),
             mask=out_mask & (offs_d0[None, :] < D))
    if BLOCK_D1 > 0:
        tl.store(out_ptr + out_rows[:, None] + offs_d1[None, :], (acc1 / l_i[:, None]).to(out_ptr.dtype.element_ty),
                 mask=out_mask & (offs_d1[None, :] < D))
    tl.store(lse_ptr + (b * H + h) * M + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=mask_m)

    if CLS_ROW == 2:
        if pid_m == 0:  # the CLS row's softmax: p₀ⱼ = 2^(s₀ⱼ − m₀) / l₀, from the logits stored above
            m0 = tl.sum(tl.where(offs_m == 0, m_i, 0.0), axis=0)
            l0 = tl.sum(tl.where(offs_m == 0, l_i, 0.0), axis=0)
            sync_global_writes()
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask_n = offs_n < N
                logit2 = tl.load(cls_row + offs_n, mask=mask_n, other=0.0)
                tl.store(cls_row + offs_n, tl.exp2(logit2 - m0) / l0, mask=mask_n)


@triton.jit
def _attn_bwd_prep_kernel(
    out_ptr, grad_out_ptr, delta_ptr, dqkv_ptr,
    N, M, H, D, ROWS,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ZERO_DQ: tl.constexpr,
):
    """delta[b, h, m] = Σ_d dO·O (fp32) for m < M; with ZERO_DQ also dq[b, n, h] = 0 for every n < N."""
    bh, pid_r = split_program_id(tl.cdiv(ROWS, BLOCK_R))
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d[None, :] < D
    mask = (offs_r[:, None] < M) & mask_d
    offs = ((b * M + offs_r) * (H * D) + h * D)[:, None] + offs_d[None, :]
    o = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + (b * H + h) * M + offs_r, tl.sum(o * do, axis=1), mask=offs_r < M)
    if ZERO_DQ:
        dq = dqkv_ptr + ((b * N + offs_r) * (3 * H * D) + h * D)[:, None] + offs_d[None, :]
        tl.store(dq, tl.zeros([BLOCK_R, BLOCK_D], dqkv_ptr.dtype.element_ty), mask=(offs_r[:, None] < N) & mask_d)


@triton.jit(do_not_specialize=["BH_BUCKET"])
def _attn_bwd_dkdv_kernel(
    qkv_ptr, index_ptr, grad_out_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, M, H, D, BH_BUCKET,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    bh, pid_n = split_program_id(tl.cdiv(N, BLOCK_N))
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d0 = tl.arange(0, BLOCK_D0)
    k0 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
    v0 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
    dk0 = tl.zeros([BLOCK_N, BLOCK_D0], tl.float32)
    dv0 = tl.zeros([BLOCK_N, BLOCK_D0], tl.float32)
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        k1 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
        v1 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
        dk1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
        dv1 = tl.zeros([BLOCK_N, BLOCK_D1], tl.float32)
    go = grad_out_ptr + b * M * (H * D) + h * D

    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
        q0 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d0, D)
        do0 = _load_tile(go, offs_m, mask_m, H * D, 1, offs_d0, D)
        s_t = tl.dot(k0, tl.trans(q0), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if BLOCK_D1 > 0:
            q1 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d1, D)
            do1 = _load_tile(go, offs_m, mask_m, H * D, 1, offs_d1, D)
            s_t = tl.dot(k1, tl.trans(q1), s_t, input_precision=DOT_PRECISION)
        lse2 = tl.load(lse_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=0.0)
        p_t = tl.exp2(s_t * qk_scale - lse2[None, :])
        p_t = tl.where(mask_n[:, None] & mask_m[None, :], p_t, 0.0)
        dv0 = tl.dot(p_t.to(do0.dtype), do0, dv0, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v0, tl.trans(do0), input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            dv1 = tl.dot(p_t.to(do1.dtype), do1, dv1, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v1, tl.trans(do1), dp_t, input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q0.dtype)
        dk0 = tl.dot(ds_t, q0, dk0, input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            dk1 = tl.dot(ds_t, q1, dk1, input_precision=DOT_PRECISION)

    dhead = dqkv_ptr + b * N * (3 * H * D) + h * D
    rows_out = offs_n[:, None] * (3 * H * D)
    out_ty = dqkv_ptr.dtype.element_ty
    mask0 = mask_n[:, None] & (offs_d0[None, :] < D)
    tl.store(dhead + H * D + rows_out + offs_d0[None, :], (dk0 * scale).to(out_ty), mask=mask0)
    tl.store(dhead + 2 * H * D + rows_out + offs_d0[None, :], dv0.to(out_ty), mask=mask0)
    if BLOCK_D1 > 0:
        mask1 = mask_n[:, None] & (offs_d1[None, :] < D)
        tl.store(dhead + H * D + rows_out + offs_d1[None, :], (dk1 * scale).to(out_ty), mask=mask1)
        tl.store(dhead + 2 * H * D + rows_out + offs_d1[None, :], dv1.to(out_ty), mask=mask1)


@triton.jit(do_not_specialize=["BH_BUCKET"])
def _attn_bwd_dq_kernel(
    qkv_ptr, index_ptr, grad_out_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, M, H, D, BH_BUCKET,
    stride_b, stride_n, stride_3, stride_h, stride_d,
    scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    bh, pid_m = split_program_id(tl.cdiv(M, BLOCK_M))
    b = (bh // H).to(tl.int64)
    h = bh % H
    head = qkv_ptr + b * stride_b + h * stride_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_d0 = tl.arange(0, BLOCK_D0)
    go = grad_out_ptr + b * M * (H * D) + h * D
    rows = tl.load(index_ptr + b * M + offs_m, mask=mask_m, other=0)
    q0 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d0, D)
    do0 = _load_tile(go, offs_m, mask_m, H * D, 1, offs_d0, D)
    dq0 = tl.zeros([BLOCK_M, BLOCK_D0], tl.float32)
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q1 = _load_tile(head, rows, mask_m, stride_n, stride_d, offs_d1, D)
        do1 = _load_tile(go, offs_m, mask_m, H * D, 1, offs_d1, D)
        dq1 = tl.zeros([BLOCK_M, BLOCK_D1], tl.float32)
    lse2 = tl.load(lse_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_ptr + (b * H + h) * M + offs_m, mask=mask_m, other=0.0)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k0 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
        v0 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d0, D)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            k1 = _load_tile(head + stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
            v1 = _load_tile(head + 2 * stride_3, offs_n, mask_n, stride_n, stride_d, offs_d1, D)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, tl.trans(v1), dp, input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        ds = (p * (dp - delta[:, None])).to(k0.dtype)
        dq0 = tl.dot(ds, k0, dq0, input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            dq1 = tl.dot(ds, k1, dq1, input_precision=DOT_PRECISION)

    dst = dqkv_ptr + b * N * (3 * H * D) + h * D + rows[:, None] * (3 * H * D)
    out_ty = dqkv_ptr.dtype.element_ty
    tl.store(dst + offs_d0[None, :], (dq0 * scale).to(out_ty), mask=mask_m[:, None] & (offs_d0[None, :] < D))
    if BLOCK_D1 > 0:
        tl.store(dst + offs_d1[None, :], (dq1 * scale).to(out_ty), mask=mask_m[:, None] & (offs_d1[None, :] < D))


# --- configs --------------------------------------------------------------------------------------------------


def head_dim_split(D: int) -> tuple[int, int]:
    """(BLOCK_D0, BLOCK_D1): D covered by a power-of-two part and a power-of-two rest (0 when none), each ≥ 16
    (tl.dot's minimum): 96 → (64, 32), 64 → (64, 0), 40 → (32, 16), 8 → (16, 0).

    ``FASTFER_TRITON_SPLIT_D=0`` pads to one power of two instead (96 → (128, 0)): the A/B switch the GPU
    validation times (bench/_gpu_smoke.py) to show the split pays.
    """
    if os.environ.get("FASTFER_TRITON_SPLIT_D", "1").strip() == "0":
        return max(16, triton.next_power_of_2(D)), 0
    d0 = max(16, 1 << (max(D, 1).bit_length() - 1))
    rest = D - d0
    return d0, (0 if rest <= 0 else max(16, triton.next_power_of_2(rest)))


def dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "tf32" if runtime.fp32_dot_precision() == "tf32" else "tf32x3"
    return "tf32"  # ignored for fp16 / bf16 operands


def family(dtype: torch.dtype, D: int) -> tuple[str, int]:
    """Candidate-set key: operand class (half, tf32, tf32x3) and padded head width."""
    d0, d1 = head_dim_split(D)
    return ("half" if dtype != torch.float32 else dot_precision(dtype)), d0 + d1


# Candidate (BLOCK_M, BLOCK_N, num_warps) per kernel, operand class and padded head width class (64: D ≤ 64,
# 128: D ≤ 128, 256: wider). Chosen from the static sm_90 table (bench/results/static-sm90.md, regenerated by
# tools/static_gate.py, which fails on any spill): every candidate at the model shapes compiles without local
# memory traffic; registers in the comments. The interpreter runs one larger tile instead (fewer programs).
CANDIDATES = {
    "fwd": {
        ("half", 64): [(64, 64, 4), (128, 64, 8)],  # 134, 119 registers
        ("half", 128): [(64, 64, 4), (128, 64, 8)],  # 150, 144
        ("tf32", 64): [(64, 32, 4), (32, 32, 4)],  # 141, 112
        ("tf32", 128): [(64, 32, 4), (32, 32, 4)],  # 190, 188
        ("tf32x3", 64): [(64, 32, 4), (16, 32, 4)],  # 210, 106
        ("tf32x3", 128): [(64, 32, 4), (64, 16, 4)],  # 226, 211
        ("half", 256): [(64, 32, 8), (32, 32, 4)],
        ("tf32", 256): [(32, 32, 8)],
        ("tf32x3", 256): [(32, 16, 8)],
    },
    "dkdv": {  # BLOCK_N keys per program, BLOCK_M queries per step
        ("half", 64): [(64, 64, 8), (64, 32, 4)],  # 174, 138
        ("half", 128): [(64, 64, 8), (32, 64, 4)],  # 210, 211 (64×32 with 4 warps spills)
        ("tf32", 64): [(32, 32, 4), (32, 64, 8)],  # 142, 156
        ("tf32", 128): [(32, 16, 4), (16, 64, 8)],  # 138, 181
        ("tf32x3", 64): [(32, 16, 4), (32, 32, 8)],  # 168, 188
        ("tf32x3", 128): [(32, 16, 8), (16, 16, 8)],  # 226, 203
        ("half", 256): [(32, 32, 8)],
        ("tf32", 256): [(16, 16, 8)],
        ("tf32x3", 256): [(16, 16, 8)],
    },
    "dq": {
        ("half", 64): [(64, 64, 4), (64, 32, 8)],  # 142, 69
        ("half", 128): [(64, 64, 4), (64, 32, 8)],  # 172, 114
        ("tf32", 64): [(32, 32, 4), (64, 32, 8)],  # 136, 116
        ("tf32", 128): [(16, 32, 4), (64, 32, 8)],  # 138, 152
        ("tf32x3", 64): [(16, 32, 4), (32, 32, 8)],  # 168, 176
        ("tf32x3", 128): [(16, 32, 4), (16, 32, 8)],  # 182, 176
        ("half", 256): [(32, 32, 8)],
        ("tf32", 256): [(16, 16, 8)],
        ("tf32x3", 256): [(16, 16, 8)],
    },
}


def _width_class(width: int) -> int:
    return 64 if width <= 64 else 128 if width <= 128 else 256


def _candidates(kind: str):
    def candidates(fam):
        if INTERPRETED:
            return [config(BLOCK_M=64, BLOCK_N=64)]
        precision, width = fam
        table = CANDIDATES[kind][(precision, _width_class(width))]
        return [config(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=2) for m, n, w in table]

    return candidates


def _prep_candidates(fam):
    return [config(BLOCK_R=64 if INTERPRETED else 32, num_warps=4, num_stages=1)]


_KEY = ["N", "M", "D", "BH_BUCKET", "DOT_PRECISION"]
FORWARD = runtime.Tunable("attn_fwd", _attn_fwd_kernel, _candidates("fwd"), _KEY)
PREP = runtime.Tunable("attn_bwd_prep", _attn_bwd_prep_kernel, _prep_candidates, ["ROWS", "D"])
DKDV = runtime.Tunable("attn_bwd_dkdv", _attn_bwd_dkdv_kernel, _candidates("dkdv"), _KEY)
DQ = runtime.Tunable("attn_bwd_dq", _attn_bwd_dq_kernel, _candidates("dq"), _KEY)


def bh_bucket(B: int, H: int) -> int:
    """Autotuning key for the batch: the power of two ≥ B·H (B = 1 and B = 128 tune separately; every batch
    size does not)."""
    return triton.next_power_of_2(B * H)


def attention_forward(qkv: torch.Tensor, index: torch.Tensor | None, scale: float, cls_row: int = CLS_NONE
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """qkv: (B, N, 3, H, D); index: (B, M) kept query rows, or None for every row (keep=None).

    Returns out (B, M, H·D) in qkv.dtype, lse (B, H, M) fp32, index (B, M) int64 (written by the kernel when
    None was passed: 0..N-1) and, when ``cls_row`` is set (only with index None), the CLS row of every head
    (B, H, N) fp32: its logits scale·q₀·kⱼ (CLS_LOGITS) or its softmax probabilities (CLS_PROBS); else None.
    """
    B, N, _, H, D = qkv.shape
    if (index is None) != (cls_row != CLS_NONE):
        raise ValueError("attention_forward: the CLS rows are produced exactly when every row is a query")
    if index is None:
        index = _buffers.empty(B, N, dtype=torch.int64, device=qkv.device)
    M = index.shape[1]
    out = _buffers.empty(B, M, H * D, dtype=qkv.dtype, device=qkv.device)
    lse = _buffers.empty(B, H, M, dtype=torch.float32, device=qkv.device)
    rows = _buffers.empty(B, H, N, dtype=torch.float32, device=qkv.device) if cls_row else None
    d0, d1 = head_dim_split(D)
    constexprs = dict(BLOCK_D0=d0, BLOCK_D1=d1, DOT_PRECISION=dot_precision(qkv.dtype), CLS_ROW=cls_row)
    grid = lambda meta: (B * H * triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
    args = (qkv, index, out, lse, rows if rows is not None else lse, N, M, H, D, bh_bucket(B, H), *qkv.stride(),
            scale * LOG2E)
    with runtime.device_guard(qkv):
        FORWARD.launch(grid, args, constexprs, family(qkv.dtype, D))
    return out, lse, index, rows


def attention_backward(grad_out, qkv, out, lse, index, scale) -> torch.Tensor:
    """grad_out, out: (B, M, H·D) contiguous; lse: (B, H, M); index: (B, M). Returns dqkv (B, N, 3, H, D)
    contiguous; rows not in index get zero dq."""
    B, N, _, H, D = qkv.shape
    M = index.shape[1]
    out = out.contiguous()
    grad_out = grad_out.contiguous()
    dqkv = _buffers.empty(B, N, 3, H, D, dtype=qkv.dtype, device=qkv.device)
    delta = _buffers.empty(B, H, M, dtype=torch.float32, device=qkv.device)
    d0, d1 = head_dim_split(D)
    fam = family(qkv.dtype, D)
    rows = N if M < N else M
    prep_grid = lambda meta: (B * H * triton.cdiv(rows, meta["BLOCK_R"]),)  # noqa: E731
    prep_args = (out, grad_out, delta, dqkv, N, M, H, D, rows)
    constexprs = dict(BLOCK_D0=d0, BLOCK_D1=d1, DOT_PRECISION=dot_precision(qkv.dtype))
    args = (qkv, index, grad_out, lse, delta, dqkv, N, M, H, D, bh_bucket(B, H), *qkv.stride(), scale,
            scale * LOG2E)
    with runtime.device_guard(qkv):
        PREP.launch(prep_grid, prep_args, dict(BLOCK_D=triton.next_power_of_2(max(D, 16)), ZERO_DQ=M < N), fam)
        DKDV.launch(lambda meta: (B * H * triton.cdiv(N, meta["BLOCK_N"]),), args, constexprs, fam)
        DQ.launch(lambda meta: (B * H * triton.cdiv(M, meta["BLOCK_M"]),), args, constexprs, fam)
    return dqkv
