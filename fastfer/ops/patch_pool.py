"""Attentive Patch Pooling: validation (once per call), ``fastfer::patch_pool`` (custom op + fake + autograd) and
dispatch to the backend the registry chooses (docs/design.md §2.1)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from fastfer.ops import _checks, lowering
from fastfer.ops.backends import registry as backends
from fastfer.ops.reference import PATCH_SCORES


class PatchPoolOutput(NamedTuple):
    tokens: Tensor  # (B, k, C), x.dtype
    index: Tensor  # (B, k) int64, ascending positions
    scores: Tensor  # (B, N) float32


def _validate(x: Tensor, k: int, pos: Optional[Tensor], score: str) -> tuple[int, int, int]:
    """Check the arguments of patch_pool; returns (B, N, C)."""
    _checks.tensor("x", x)
    _checks.rank("x", x, (3, 4), "(B, C, H, W) feature map or (B, N, C) token")
    _checks.float_dtype("x", x)
    if x.dim() == 4:
        B, C, H, W = x.shape
        N = H * W
    else:
        B, N, C = x.shape
    if N == 0 or C == 0:
        raise ValueError(f"x: expected at least one position and one channel, got shape {tuple(x.shape)}")
    _checks.integer("k", k, 1, N, f"positions kept out of N={N}")
    _checks.choice("score", score, PATCH_SCORES)
    if pos is not None:
        _checks.tensor("pos", pos)
        if tuple(pos.shape) != (N, C):
            raise ValueError(f"pos: expected shape (N, C) = ({N}, {C}) to match x, got {tuple(pos.shape)}")
        _checks.float_dtype("pos", pos)
        _checks.same_device("pos", pos, "x", x)
    return B, N, C


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _call(t: Tensor) -> backends.Call:
    return backends.Call("patch_pool", t.device, t.dtype)


def _dims(x: Tensor) -> tuple[int, int]:
    """(N, C) of a (B, C, H, W) map or (B, N, C) tokens."""
    return (x.shape[2] * x.shape[3], x.shape[1]) if x.dim() == 4 else (x.shape[1], x.shape[2])


@torch.library.custom_op("fastfer::patch_pool", mutates_args=())
def _patch_pool_op(x: Tensor, k: int, pos: Optional[Tensor], score: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (tokens, index, scores). Arguments were validated by the public :func:`patch_pool`."""
    if x.shape[0] == 0:
        return _empty_outputs(x, k, *_dims(x))
    return tuple(backends.select(_call(x)).load().patch_pool(x, k, pos, score))


def _empty_outputs(x: Tensor, k: int, N: int, C: int) -> tuple[Tensor, Tensor, Tensor]:
    B = x.shape[0]
    return (
        x.new_empty(B, k, C),
        x.new_empty(B, k, dtype=torch.int64),
        x.new_empty(B, N, dtype=torch.float32),
    )


@_patch_pool_op.register_fake
def _patch_pool_fake(x, k, pos, score):
    return _empty_outputs(x, k, *_dims(x))


@torch.library.custom_op("fastfer::patch_pool_backward", mutates_args=())
def _patch_pool_backward_op(
    grad_tokens: Tensor,
    index: Tensor,
    x_shape: Sequence[int],
    channels_last: bool,
    pos_dtype: Optional[torch.dtype],
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Returns (grad_x shaped like x, grad_pos (N, C) or an empty tensor when pos was None); ``backend`` is the
    name of the backend that ran the forward."""
    if grad_tokens.shape[0] == 0:
        return _backward_outputs(grad_tokens, x_shape, channels_last, pos_dtype, zero=True)
    impl = backends.get(backend).load()
    grad_x, grad_pos = impl.patch_pool_backward(grad_tokens, index, tuple(x_shape), channels_last, pos_dtype)
    return grad_x, grad_pos if grad_pos is not None else grad_tokens.new_empty(0)


def _backward_outputs(grad_tokens, x_shape, channels_last, pos_dtype, zero=False):
    C = grad_tokens.shape[2]
    N = x_shape[1] if len(x_shape) == 3 else x_shape[2] * x_shape[3]
    new = grad_tokens.new_zeros if zero else grad_tokens.new_empty
    grad_x = new(tuple(x_shape))
    if channels_last:
        grad_x = grad_x.contiguous(memory_format=torch.channels_last)
    grad_pos = new(N, C, dtype=pos_dtype) if pos_dtype is not None else grad_tokens.new_empty(0)
    return grad_x, grad_pos


@_patch_pool_backward_op.register_fake
def _patch_pool_backward_fake(grad_tokens, index, x_shape, channels_last, pos_dtype, backend):
    return _backward_outputs(grad_tokens, x_shape, channels_last, pos_dtype)


def _setup_context(ctx, inputs, output):
    x, _, pos, _ = inputs
    _, index, scores = output
    ctx.save_for_backward(index)
    ctx.mark_non_differentiable(index, scores)
    ctx.x_shape = tuple(x.shape)
    ctx.channels_last = _is_channels_last(x)
    ctx.pos_dtype = pos.dtype if pos is not None else None
    ctx.backend = backends.select(_call(x)).name  # memoised: the choice the forward made


def _backward(ctx, grad_tokens, _grad_index, _grad_scores):
    (index,) = ctx.saved_tensors
    grad_x, grad_pos = _patch_pool_backward_op(
        grad_tokens.contiguous(), index, ctx.x_shape, ctx.channels_last, ctx.pos_dtype, ctx.backend
    )
    return grad_x, None, (grad_pos if ctx.pos_dtype is not None else None), None


_patch_pool_op.register_autograd(_backward, setup_context=_setup_context)


def patch_pool(
    x: Tensor, k: int, *, pos: Optional[Tensor] = None, score: str = "l1", backend: Optional[str] = None
) -> PatchPoolOutput:
    """Attentive Patch Pooling (APViT APP): keep the k highest-scoring positions of a feature map.

    Args:
        x: (B, C, H, W) feature map in any memory format, or (B, N, C) tokens; fp32/fp16/bf16.
        k: positions to keep, 1 ≤ k ≤ N (N = H·W).
        pos: optional (N, C) position embedding added to the kept tokens (APViT adds it before selection;
            gathering it after is the same and cheaper).
        score: per-position score over channels: ``l1`` Σ|x| (APViT), ``sum``, ``l2`` Σx², ``max``, ``max_abs``.
        backend: run this call on ``triton``, ``cuda``, ``cpu`` or ``torch`` (default: the pinned backend, else
            automatic; see ``fastfer.ops.backends()``). Inside ``torch.compile`` pin with
            ``fastfer.ops.use_backend`` around the compiled call instead.

    Returns:
        ``PatchPoolOutput(tokens (B, k, C) in x.dtype, index (B, k) int64 ascending, scores (B, N) fp32)``.
        The k highest scores win, ties go to the lower position, NaN scores rank lowest. Gradients reach x
        (scattered into the kept positions) and pos (summed over the batch), never the scores.
    """
    _validate(x, k, pos, score)
    if lowering.active() is not None:
        return PatchPoolOutput(*lowering.patch_pool_reference(x, k, pos, score, lowering.active()))
    if backend is not None:
        _checks.per_call_backend(backend)
        with backends.use_backend(backend):
            return PatchPoolOutput(*_patch_pool_op(x, k, pos, score))
    return PatchPoolOutput(*_patch_pool_op(x, k, pos, score))
