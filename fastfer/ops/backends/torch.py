"""The ``torch`` backend: the pure-PyTorch reference (:mod:`fastfer.ops.reference`) as an implementation.

Runs anywhere torch runs, in every float dtype including float64 (what ``gradcheck`` needs); it materialises
the M×N logits, so it is the fallback and the oracle, not the fast path.
"""
from __future__ import annotations

import importlib

import torch

from fastfer.ops.backends.registry import FLOAT_DTYPES, Backend, register

register(
    Backend(
        name="torch",
        description="pure-PyTorch reference (fastfer.ops.reference); also accepts float64 for gradcheck",
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        dtypes=FLOAT_DTYPES + (torch.float64,),
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=None,
        probe=lambda call: [],
        load=lambda: importlib.import_module("fastfer.ops.reference"),
    )
)
