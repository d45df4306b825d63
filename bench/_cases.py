"""Benchmark shapes (docs/design.md §5) and the providers each op is measured with.

Three shape sets: ``gpu`` (the model shapes at B=1 and B=128, fp32/fp16/bf16), ``cpu`` (the same token counts
at B=8, fp32 and bf16) and ``smoke`` (tiny shapes so ``pytest bench --benchmark-disable`` checks the
harness in seconds). The set in use is picked by :func:`bench._harness.BenchConfig`; the test ids stay the same
across machines for a given set, so ``--benchmark-compare`` lines runs up by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionShape:
    """One token_pool_attention call: qkv (B, N, 3, H, D); keep non-CLS tokens (None = no pooling)."""

    name: str
    N: int
    H: int
    D: int
    keep: int | None
    score: str = "logit_sum"

    @property
    def M(self) -> int:
        """Query rows the op outputs: 1 + keep, or N without pooling."""
        return self.N if self.keep is None else 1 + self.keep


@dataclass(frozen=True)
class PatchShape:
    """One patch_pool call: x (B, C, side, side), keep k of N = side² positions, pos (N, C) added."""

    name: str
    C: int
    side: int
    k: int

    @property
    def N(self) -> int:
        return self.side * self.side


def apvit_keep(n_tokens: int, rate: float = 0.9) -> int:
    """APViT's keep count for a block with n_tokens (CLS included): max(int(rate·(N−1)), 1)."""
    return max(int(rate * (n_tokens - 1)), 1)


def evit_keep(n_tokens: int, rate: float = 0.7) -> int:
    """EViT's keep count (DeiT-S, keep rate 0.7): ceil(rate·(N−1))."""
    return math.ceil(rate * (n_tokens - 1))


# APViT blocks 4-7 pool (161 → 145 → 130 → 117 → 105 tokens), heads 8 × 96; FER-former: 52 tokens, 4 × 64,
# no pooling (plain attention); DeiT-S with EViT pooling: 197 tokens, 6 × 64, mean softmax CLS row.
MODEL_ATTENTION = (
    AttentionShape("apvit_b4", 161, 8, 96, apvit_keep(161)),
    AttentionShape("apvit_b5", 145, 8, 96, apvit_keep(145)),
    AttentionShape("apvit_b6", 130, 8, 96, apvit_keep(130)),
    AttentionShape("apvit_b7", 117, 8, 96, apvit_keep(117)),
    AttentionShape("ferformer", 52, 4, 64, None),
    AttentionShape("deits_evit", 197, 6, 64, evit_keep(197), score="prob_mean"),
)
MODEL_PATCH = (PatchShape("apvit_app", 768, 14, 160),)

SMOKE_ATTENTION = (
    AttentionShape("tiny_pool", 17, 2, 16, 12),
    AttentionShape("tiny_nopool", 9, 2, 8, None),
    AttentionShape("tiny_evit", 13, 3, 8, 9, score="prob_mean"),
)
SMOKE_PATCH = (PatchShape("tiny_app", 16, 4, 12),)

SETS = {
    # name: (attention shapes, patch shapes, batches, dtypes)
    "gpu": (MODEL_ATTENTION, MODEL_PATCH, (1, 128), (torch.float32, torch.float16, torch.bfloat16)),
    "cpu": (MODEL_ATTENTION, MODEL_PATCH, (8,), (torch.float32, torch.bfloat16)),
    "smoke": (SMOKE_ATTENTION, SMOKE_PATCH, (2,), (torch.float32,)),
}

MODES = ("fwd", "fwdbwd")
# Baselines first; ``fastfer-<backend>`` for every backend of the op layer (skipped where it cannot run).
ATTENTION_BASELINES = ("eager", "sdpa", "compile")
PATCH_BASELINES = ("eager", "compile")
FASTFER_BACKENDS = ("triton", "cuda", "cpu", "torch")


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
