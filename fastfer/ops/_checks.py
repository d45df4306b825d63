"""Argument validation shared by the ops: each error names the argument, what was expected and what came."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fastfer.ops.limits import MAX_HEAD_DIM  # noqa: F401 (re-exported: the one limit)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def float_dtype(name: str, t: Tensor) -> None:
    # float64 is accepted for gradcheck; only the reference backend runs it (the chooser says so).
    if t.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")


def rank(name: str, t: Tensor, ranks: tuple[int, ...], layout: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{name}: expected a {layout} tensor (rank {' or '.join(map(str, ranks))}), "
                         f"got rank {t.dim()} with shape {tuple(t.shape)}")


def integer(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.SymInt):
            return value  # symbolic under torch.compile; bounds are checked on the concrete call
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected {low} ≤ {name} ≤ {high} ({what}), got {value}")
    return value


def choice(name: str, value: object, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def same_device(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref_name}'s device {ref.device}, got {t.device}")


def finite_scale(scale: object) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale: expected a finite non-zero float, got {scale}")
    return float(scale)


def per_call_backend(backend: object) -> None:
    """``backend=`` of a functional op call: a pin for this call only, which cannot work inside a compiled
    region (the pin would apply at trace time, not when the compiled graph runs)."""
    if torch.compiler.is_compiling():
        raise RuntimeError(f"backend={backend!r}: a per-call backend does not work inside torch.compile; pin it "
                           f"around the compiled call with `with fastfer.ops.use_backend({backend!r}): ...`")
