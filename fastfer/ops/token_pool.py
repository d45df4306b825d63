"""Attentive Token Pooling attention: validation (once per call), ``fastfer::token_pool_attention`` (custom op +
fake + autograd) and dispatch to the backend the registry chooses (docs/design.md §2.2)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastfer.ops import _checks, lowering
from fastfer.ops.backends import registry as backends
from fastfer.ops.reference import CLS_SCORES

OP = "token_pool_attention"


class TokenPoolOutput(NamedTuple):
    out: Tensor  # (B, M, H·D), qkv.dtype — attention output of the kept queries
    index: Tensor  # (B, M) int64 — 0, then the kept positions ascending
    cls_scores: Tensor  # (B, N) float32


def _validate(qkv: Tensor, keep: Optional[int], scale: Optional[float], score: str) -> Optional[float]:
    """Check the arguments of token_pool_attention; returns the checked scale."""
    _checks.tensor("qkv", qkv)
    _checks.rank("qkv", qkv, (5,), "(B, N, 3, H, D) packed qkv")
    B, N, three, H, D = qkv.shape
    if three != 3:
        raise ValueError(f"qkv: expected shape (B, N, 3, H, D) with 3 at dim 2, got {tuple(qkv.shape)}")
    if N == 0 or H == 0 or D == 0:
        raise ValueError(f"qkv: expected N, H and D ≥ 1, got shape {tuple(qkv.shape)}")
    if D > _checks.MAX_HEAD_DIM:
        raise ValueError(f"qkv: expected head dim D ≤ {_checks.MAX_HEAD_DIM}, got D={D} (shape {tuple(qkv.shape)})")
    _checks.float_dtype("qkv", qkv)
    if keep is not None:
        if N < 2:
            raise ValueError(f"keep: expected None for a single token (N=1), got {keep}")
        _checks.integer("keep", keep, 1, N - 1, f"non-CLS tokens kept out of N-1={N - 1}")
    _checks.choice("score", score, CLS_SCORES)
    return _checks.finite_scale(scale)


def _call(qkv: Tensor) -> backends.Call:
    D = qkv.shape[-1]
    # A symbolic D (torch.compile with dynamic shapes) was already checked against the limit by _validate.
    return backends.Call(OP, qkv.device, qkv.dtype, head_dim=D if isinstance(D, int) else None)


def _outputs(qkv: Tensor, keep: Optional[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised (out, index, cls_scores, lse) of the right shapes (fake kernel, empty batch)."""
    B, N, _, H, D = qkv.shape
    M = N if keep is None else 1 + keep
    return (
        qkv.new_empty(B, M, H * D),
        qkv.new_empty(B, M, dtype=torch.int64),
        qkv.new_empty(B, N, dtype=torch.float32),
        qkv.new_empty(B, H, M, dtype=torch.float64 if qkv.dtype == torch.float64 else torch.float32),
    )


@torch.library.custom_op("fastfer::token_pool_attention", mutates_args=())
def _token_pool_op(qkv: Tensor, keep: Optional[int], scale: Optional[float], score: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (out, index, cls_scores, lse); lse (B, H, M) is the natural-log softmax normaliser of each kept
    row (fp32; fp64 for fp64 inputs), saved for the backward pass. Arguments were validated by the public
    :func:`token_pool_attention` (call that, not this op)."""
    if qkv.shape[0] == 0:
        return _outputs(qkv, keep)
    scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    return tuple(backends.select(_call(qkv)).load().token_pool_attention(qkv, keep, scale, score))


@_token_pool_op.register_fake
def _token_pool_fake(qkv, keep, scale, score):
    return _outputs(qkv, keep)


@torch.library.custom_op("fastfer::token_pool_attention_backward", mutates_args=())
def _token_pool_backward_op(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, index: Tensor, scale: float,
                            backend: str) -> Tensor:
    """d(qkv) (B, N, 3, H, D) for the kept query rows against all N keys; dropped query rows get zero.
    ``backend`` is the name of the backend that ran the forward (recorded by the autograd context)."""
    if qkv.shape[0] == 0:
        return torch.zeros_like(qkv, memory_format=torch.contiguous_format)
    impl = backends.get(backend).load()
    return impl.token_pool_attention_backward(grad_out, qkv, out, lse, index, scale)


@_token_pool_backward_op.register_fake
def _token_pool_backward_fake(grad_out, qkv, out, lse, index, scale, backend):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, _, scale, _ = inputs
    out, index, scores, lse = output
    ctx.save_for_backward(qkv, out, lse, index)
    ctx.mark_non_differentiable(index, scores, lse)
    ctx.scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    ctx.backend = backends.select(_call(qkv)).name  # memoised: the choice the forward made


def _backward(ctx, grad_out, _grad_index, _grad_scores, _grad_lse):
    qkv, out, lse, index = ctx.saved_tensors
    dqkv = _token_pool_backward_op(grad_out.contiguous(), qkv, out, lse, index, ctx.scale, ctx.backend)
    return dqkv, None, None, None


_token_pool_op.register_autograd(_backward, setup_context=_setup_context)


def token_pool_attention(
    qkv: Tensor,
    keep: Optional[int] = None,
    *,
    scale: Optional[float] = None,
    score: str = "logit_sum",
    backend: Optional[str] = None,
) -> TokenPoolOutput:
    """Multi-head self-attention that also pools tokens (APViT Attentive Token Pooling).

    Args:
        qkv: (B, N, 3, H, D) — the reshaped output of the qkv Linear, read in place; token 0 is CLS. D ≤ 256.
        keep: non-CLS tokens to keep (1 ≤ keep ≤ N-1), or None for plain attention over all tokens.
        scale: logit scale, default D**-0.5.
        score: CLS-row score over heads: ``logit_sum`` Σ_h scale·q₀·kⱼ before softmax (APViT) or
            ``prob_mean`` mean_h softmax row (EViT).
        backend: run this call on ``triton``, ``cuda``, ``cpu`` or ``torch`` (default: the pinned backend, else
            automatic; see ``fastfer.ops.backends()``). Inside ``torch.compile`` pin with
            ``fastfer.ops.use_backend`` around the compiled call instead.

    Returns:
        ``TokenPoolOutput(out (B, M, H·D), index (B, M) int64, cls_scores (B, N) fp32)`` with M = 1 + keep
        (N when keep is None). ``out`` is the attention output of the kept queries only, each attending to
        all N keys, in token layout ready for the output projection; ``index`` is 0 followed by the kept
        positions in ascending order. The caller gathers its residual stream with ``index``: since the
        projection is per token, gather(x + proj(attn)) == gather(x) + proj(out). Selection: highest scores
        win, ties go to the lower position, NaN ranks lowest. Gradients flow to qkv, not through the scores.
    """
    scale = _validate(qkv, keep, scale, score)
    if lowering.active() is not None:
        out, index, cls_scores, _ = lowering.token_pool_attention_reference(qkv, keep, scale, score,
                                                                            lowering.active())
        return TokenPoolOutput(out, index, cls_scores)
    if backend is not None:
        _checks.per_call_backend(backend)
        with backends.use_backend(backend):
            out, index, cls_scores, _lse = _token_pool_op(qkv, keep, scale, score)
    else:
        out, index, cls_scores, _lse = _token_pool_op(qkv, keep, scale, score)
    return TokenPoolOutput(out, index, cls_scores)
