"""Work that must be done per op call — bytes that must move and FLOPs that must run — and the hardware floor.

Counts are the algorithmic minimum of the op's contract (docs/design.md §2), the same for every provider, so the
achieved GB/s and TFLOP/s of a baseline that moves or computes more (eager materialises the N×N logits and
attends all N queries) read as *useful* throughput. The floor of a call is
``max(bytes ÷ copy bandwidth, FLOPs ÷ GEMM rate)`` with both rates measured on the device (bench/conftest);
the larger term names the bound (``memory`` or ``compute``) and ``floor_fraction = floor ÷ measured time``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from bench._cases import AttentionShape, PatchShape

INDEX_BYTES = 8  # int64
SCORE_BYTES = 4  # fp32


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float


def attention_cost(shape: AttentionShape, B: int, dtype: torch.dtype, mode: str) -> Cost:
    """token_pool_attention: read qkv (B, N, 3, H, D), write out (B, M, H·D), scores (B, N), index (B, M).

    FLOPs: QKᵀ and PV for the M kept queries (4·B·M·N·H·D) plus the CLS row (2·B·N·H·D). The backward
    (``fwdbwd``) re-reads qkv, out, d(out) and the LSE and writes d(qkv): 2.5× the forward attention FLOPs.
    """
    es = torch.finfo(dtype).bits // 8
    N, M, HD = shape.N, shape.M, shape.H * shape.D
    qkv = B * N * 3 * HD * es
    nbytes = qkv + B * M * HD * es + B * N * SCORE_BYTES + B * M * INDEX_BYTES
    attn_flops = 4.0 * B * M * N * HD
    flops = attn_flops + 2.0 * B * N * HD
    if mode == "fwdbwd":
        nbytes += qkv + 2 * B * M * HD * es + B * shape.H * M * SCORE_BYTES + B * M * INDEX_BYTES + qkv
        flops += 2.5 * attn_flops
    return Cost(float(nbytes), flops)


def patch_cost(shape: PatchShape, B: int, dtype: torch.dtype, mode: str) -> Cost:
    """patch_pool with pos: read x (B, C, N) and pos (N, C) once, write tokens (B, k, C), scores, index.

    The backward reads d(tokens) and the index and writes d(x) (zeros outside the kept positions) and d(pos).
    """
    es = torch.finfo(dtype).bits // 8
    N, C, k = shape.N, shape.C, shape.k
    nbytes = B * N * C * es + N * C * es + B * k * C * es + B * N * SCORE_BYTES + B * k * INDEX_BYTES
    flops = 2.0 * B * N * C + B * k * C
    if mode == "fwdbwd":
        nbytes += B * k * C * es + B * k * INDEX_BYTES + B * N * C * es + N * C * es
        flops += B * k * C
    return Cost(float(nbytes), flops)


def roofline(cost: Cost, seconds: float, copy_gbps: float, gemm_tflops: float) -> dict:
    """Achieved rates and the fraction of the measured floor for one median time."""
    t_mem = cost.bytes / (copy_gbps * 1e9)
    t_math = cost.flops / (gemm_tflops * 1e12)
    floor = max(t_mem, t_math)
    return dict(
        gbps=cost.bytes / seconds / 1e9,
        tflops=cost.flops / seconds / 1e12,
        floor_s=floor,
        bound="memory" if t_mem >= t_math else "compute",
        floor_fraction=floor / seconds,
    )


@dataclass
class HardwareFloor:
    """Copy bandwidth (GB/s, read + write) and GEMM rate (TFLOP/s, per dtype) measured once on ``device``.

    ``small`` shrinks the buffers for smoke runs (the numbers are then only indicative).
    """

    device: torch.device
    small: bool = False
    copy_gbps: float = 0.0
    copy_bytes: int = 0
    _gemm: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.copy_bytes = self._copy_size()
        self.copy_gbps = self._measure_copy(self.copy_bytes)

    def _copy_size(self) -> int:
        if self.small:
            return 8 << 20
        return (256 << 20) if self.device.type == "cuda" else (64 << 20)

    def _gemm_size(self, dtype: torch.dtype) -> int:
        if self.small:
            return 256
        if self.device.type == "cuda":
            return 8192 if dtype in (torch.float16, torch.bfloat16) else 4096
        return 1024

    def _time(self, fn, reps: int) -> float:
        """Median seconds of fn() over reps after two warm-up calls."""
        fn()
        fn()
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def _measure_copy(self, nbytes: int) -> float:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=self.device).uniform_()
        dst = torch.empty_like(src)
        seconds = self._time(lambda: dst.copy_(src), reps=5 if self.small else 20)
        return 2 * nbytes / seconds / 1e9  # a copy reads and writes every byte

    def gemm_tflops(self, dtype: torch.dtype) -> float:
        """Dense n×n×n matmul rate in ``dtype`` under the current precision settings (cached per dtype)."""
        if dtype not in self._gemm:
            n = self._gemm_size(dtype)
            a = torch.randn(n, n, device=self.device, dtype=dtype)
            b = torch.randn(n, n, device=self.device, dtype=dtype)
            out = torch.empty(n, n, device=self.device, dtype=dtype)
            seconds = self._time(lambda: torch.mm(a, b, out=out), reps=3 if self.small else 10)
            self._gemm[dtype] = 2.0 * n**3 / seconds / 1e12
        return self._gemm[dtype]

    def as_dict(self) -> dict:
        return dict(
            device=str(self.device),
            small=self.small,
            copy_gbps=round(self.copy_gbps, 2),
            copy_buffer_mib=self.copy_bytes >> 20,
            gemm_tflops={str(d).replace("torch.", ""): round(v, 4) for d, v in self._gemm.items()},
        )
