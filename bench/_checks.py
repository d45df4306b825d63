"""Correctness checks run once per benchmark, outside the timed region: every provider must compute the op.

Selections are judged by scores, not by raw indices (docs/kernels.md §7): the kept set must be ascending
(CLS first for attention) and no dropped position may outscore a kept one by more than the score error of
the dtype. Values are compared with the fp32 reference evaluated on the provider's own selection.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastfer.ops import reference

# (atol, rtol) per dtype. These guard the benchmarks against wrong results (wrong rows, NaN, a broken baseline);
# the tight per-kernel tolerances live in tests/ops. Gradients: xformers' backward tolerances.
VALUE_TOL = {torch.float32: (3e-4, 2e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 2e-2)}
GRAD_TOL = {torch.float32: (9e-4, 1e-4), torch.float16: (2e-1, 2e-2), torch.bfloat16: (9e-1, 1e-1)}
# Relative score error allowed when judging a selection (scores computed in the input dtype by the baselines).
SCORE_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def check_selection(index: Tensor, scores: Tensor, k: int, dtype: torch.dtype, offset: int = 0) -> None:
    """index (B, k) positions into scores (B, N) fp32 (offset: positions < offset are excluded from ranking)."""
    B, N = scores.shape
    assert index.shape == (B, k), f"index: expected shape {(B, k)}, got {tuple(index.shape)}"
    assert bool((index[:, 1:] > index[:, :-1]).all()), "index: kept positions are not strictly ascending"
    assert bool(((index >= offset) & (index < N)).all()), f"index: positions outside [{offset}, {N})"
    kept = torch.zeros(B, N, dtype=torch.bool, device=scores.device).scatter_(1, index, True)
    # Positions < offset (CLS) are outside the ranking: neither kept nor dropped. (Counting CLS as kept made
    # every provider fail on prob_mean, where CLS's own probability can be below a dropped token's.)
    kept, ranked_scores = kept[:, offset:], scores[:, offset:]
    ranked = ranked_scores.masked_fill(~kept, float("inf")).amin(1)  # weakest kept
    dropped = ranked_scores.masked_fill(kept, float("-inf")).amax(1)  # strongest dropped
    tol = SCORE_RTOL[dtype] * scores.abs().amax(1) + 1e-6
    worst = (dropped - ranked - tol).max().item()
    assert worst <= 0, f"selection: a dropped position outscores a kept one by {worst + tol.max().item():.3g}"


def check_attention(qkv: Tensor, keep: int | None, scale: float, score: str, out: Tensor, index: Tensor,
                    grad_out: Tensor | None = None, grad_qkv: Tensor | None = None) -> None:
    """Provider outputs of token_pool_attention (and d(qkv) for grad_out) against the fp32 reference."""
    B, N, _, H, D = qkv.shape
    ref_qkv = qkv.detach().float().requires_grad_(grad_out is not None)
    if keep is not None:
        assert bool((index[:, 0] == 0).all()), "index: CLS (position 0) must come first"
        q0, k = ref_qkv[:, 0, 0].detach(), ref_qkv[:, :, 1].detach().transpose(1, 2)
        check_selection(index[:, 1:], reference.cls_scores(q0, k, scale, score).float(), keep, qkv.dtype, offset=1)
    ref_out, _ = reference.attend(ref_qkv, index.contiguous(), scale)
    atol, rtol = VALUE_TOL[qkv.dtype]
    torch.testing.assert_close(out.float(), ref_out, atol=atol, rtol=rtol, msg=lambda m: f"out: {m}")
    if grad_out is not None:
        (ref_grad,) = torch.autograd.grad(ref_out, ref_qkv, grad_out.float())
        atol, rtol = GRAD_TOL[qkv.dtype]
        torch.testing.assert_close(grad_qkv.float(), ref_grad, atol=atol, rtol=rtol, msg=lambda m: f"d(qkv): {m}")


def check_patch(x: Tensor, k: int, pos: Tensor, tokens: Tensor, index: Tensor,
                grad_tokens: Tensor | None = None, grads: tuple[Tensor, Tensor] | None = None) -> None:
    """Provider outputs of patch_pool (and d(x), d(pos) for grad_tokens) against the fp32 reference."""
    ref_x = x.detach().float().requires_grad_(grad_tokens is not None)
    ref_pos = pos.detach().float().requires_grad_(grad_tokens is not None)
    ref_tok = reference.as_tokens(ref_x)
    check_selection(index, reference.patch_scores(ref_tok.detach(), "l1"), k, x.dtype)
    ref = reference.gather_tokens(ref_tok, index.contiguous(), ref_pos)
    atol, rtol = VALUE_TOL[x.dtype]
    torch.testing.assert_close(tokens.float(), ref, atol=atol, rtol=rtol, msg=lambda m: f"tokens: {m}")
    if grad_tokens is not None:
        ref_gx, ref_gpos = torch.autograd.grad(ref, (ref_x, ref_pos), grad_tokens.float())
        atol, rtol = GRAD_TOL[x.dtype]
        torch.testing.assert_close(grads[0].float(), ref_gx, atol=atol, rtol=rtol, msg=lambda m: f"d(x): {m}")
        torch.testing.assert_close(grads[1].float(), ref_gpos, atol=atol, rtol=rtol, msg=lambda m: f"d(pos): {m}")
