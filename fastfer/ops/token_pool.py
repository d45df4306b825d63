"""Attentive Token Pooling attention: validation (once per call), ``fastfer::token_pool_attention`` (custom op +
fake + autograd) and dispatch to the backend the registry chooses (docs/design.md §2.2).

One more path, eager CPU calls under automatic choice only (:func:`_composed_wins`): the ATen composition —
the CLS scores from one small bmm, the positional top-k of the reference, and PyTorch's own
``scaled_dot_product_attention`` over the kept queries (all queries when ``keep`` is None, which is exactly
what timm's attention runs). Autograd goes through ATen's SDPA backward. It replaces backends that are slower
on CPU than ATen's flash kernel (measured: bench/patch_compare.py); a pinned backend always runs itself.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastfer.ops import _checks, lowering, reference
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
    if backend is None and _composed_wins(qkv, keep):
        return _composed(qkv, keep, qkv.shape[-1] ** -0.5 if scale is None else scale, score)
    if backend is not None:
        _checks.per_call_backend(backend)
        with backends.use_backend(backend):
            out, index, cls_scores, _lse = _token_pool_op(qkv, keep, scale, score)
    else:
        out, index, cls_scores, _lse = _token_pool_op(qkv, keep, scale, score)
    return TokenPoolOutput(out, index, cls_scores)


# Automatic choice on CPU: the backends the ATen composition replaces, for plain attention (keep=None) and
# for pooling. Measured at DeiT-S shapes (B=8, H=6, D=64, fp32, 1 thread, min of 23 interleaved calls on a
# loaded 2-core Ice Lake): N=197 plain attention, ATen 19 ms forward / 81 ms forward+backward vs the C++
# ``cpu`` kernel 31 / 104 and the reference 35 / 161; pooling (197→139, 139→98, 98→69) ATen 9.7 / 4.9 / 3.0
# ms forward vs ``cpu`` 10.8 / 5.2 / 3.3 and the reference 18.8 / 8.8 / 5.5. Plain attention is exactly
# what timm runs, so it always goes to SDPA; for pooling the ``cpu`` kernel stays the automatic choice (it is
# within 10 % and being rewritten to beat the composition, issue 16) — re-measure with
# bench/patch_compare.py before changing an entry.
_COMPOSED_REPLACES = {None: ("torch", "cpu"), "pool": ("torch",)}


def _composed_wins(qkv: Tensor, keep: Optional[int]) -> bool:
    """Whether this call runs :func:`_composed`: eager, CPU, no backend pinned, and the automatic choice would
    be a backend the composition beats (:data:`_COMPOSED_REPLACES`)."""
    if qkv.device.type != "cpu" or torch.compiler.is_compiling():
        return False  # compiled graphs keep the op (its backend is resolved when the graph runs)
    if backends.get_backend() is not None or qkv.shape[0] == 0:
        return False
    return backends.select(_call(qkv)).name in _COMPOSED_REPLACES[None if keep is None else "pool"]


def _cls_scores(qkv: Tensor, scale: float, score: str) -> Tensor:
    """CLS-row scores (B, N) fp32 of packed qkv (B, N, 3, H, D), as :func:`reference.cls_scores`, in one bmm.

    The CLS queries go into a block-diagonal (B, H, H·D) matrix and the keys are read in place as the
    transposed (B, H·D, N) view of their (B, N, H·D) rows (row stride 3·H·D), so logits[b, h, n] = ⟨q₀ʰ, kₙʰ⟩
    with no copy of the keys (H times the multiply-adds of the CLS row, still ~1/N of the attention's).
    """
    B, N, _, H, D = qkv.shape
    acc = reference.accumulation_dtype(qkv.dtype)
    qkv = qkv.detach()
    keys = qkv[:, :, 1].reshape(B, N, H * D).to(acc)
    q0 = qkv[:, 0, 0].to(acc) * scale  # (B, H, D)
    blocks = q0.new_zeros(B, H, H, D)
    blocks.diagonal(dim1=1, dim2=2).copy_(q0.transpose(1, 2))  # blocks[b, h, h, :] = scale·q₀ʰ
    logits = torch.bmm(blocks.view(B, H, H * D), keys.transpose(1, 2))  # (B, H, N)
    if score == "logit_sum":
        return logits.sum(1).float()
    return logits.softmax(-1).mean(1).float()


def _composed(qkv: Tensor, keep: Optional[int], scale: float, score: str) -> TokenPoolOutput:
    """The op as ATen ops (same results as the reference within rounding; differentiable through SDPA)."""
    B, N, _, H, D = qkv.shape
    scores = _cls_scores(qkv, scale, score)
    # timm's layout: q, k, v as (B, H, N, D) views of qkv, so the backward stacks their gradients in one go.
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if keep is None:
        index = torch.arange(N, device=qkv.device).expand(B, N).contiguous()
    else:
        kept = reference.select_topk_positional(scores[:, 1:], keep) + 1
        index = torch.cat([kept.new_zeros(B, 1), kept], dim=1)
        q = _gather_queries(q, index)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, M, D)
    return TokenPoolOutput(out.transpose(1, 2).reshape(B, index.shape[1], H * D), index, scores)


def _gather_queries(q: Tensor, index: Tensor) -> Tensor:
    """q (B, H, N, D) (timm's permuted view of packed qkv), index (B, M) → the kept queries (B, H, M, D).

    The queries of packed qkv are whole (H·D) rows of one (B·N, H·D) strided view, so one ``index_select``
    copies each kept row once (``gather`` over the head dim walks it element by element: ~4× slower on
    CPU); the result is a (B, M, H, D) tensor seen as (B, H, M, D), the layout SDPA reads as it reads timm's.
    """
    B, H, N, D = q.shape
    M = index.shape[1]
    rows = q.transpose(1, 2).reshape(B * N, H * D)  # a view when qkv is a (B, N, 3·H·D) Linear output
    flat = (index + torch.arange(B, device=index.device).unsqueeze(1) * N).reshape(B * M)
    return rows.index_select(0, flat).view(B, M, H, D).transpose(1, 2)
