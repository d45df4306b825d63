"""Shared oracles and checks for the op tests.

Tolerance rule (docs/design.md §4): a backend's error against an fp64 reference may be at most twice the error
of plain PyTorch computing the same thing in the same precision (+1e-5 absolute floor where that baseline is
~0). Indices are compared exactly only where the margin between the k-th and (k+1)-th score exceeds the
measured score error; elsewhere the selection must merely be valid (no dropped score above a kept one).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastfer.ops import reference, token_pool_attention
from fastfer.ops.backends import registry as _backends

FLOOR = 1e-5


def backends_for(op: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> list[str]:
    """Every registered backend that can run this call here (the reference included)."""
    call = _backends.Call(op, device, dtype, head_dim)
    return [b["name"] for b in _backends.backends() if not _backends.get(b["name"]).not_supported_reasons(call)]


def rule_error(actual: Tensor, ref64: Tensor, lowprec: Tensor) -> tuple[float, float]:
    """(error of actual, allowed error) under the 2× low-precision rule; NaN-safe."""
    err = (actual.double() - ref64).abs().nan_to_num(float("inf")).max().item() if actual.numel() else 0.0
    base = (lowprec.double() - ref64).abs().nan_to_num(0.0).max().item() if lowprec.numel() else 0.0
    return err, 2 * base + FLOOR * max(1.0, ref64.abs().max().item() if ref64.numel() else 1.0)


def assert_rule(actual: Tensor, ref64: Tensor, lowprec: Tensor, what: str) -> None:
    assert actual.shape == ref64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref64.shape)}"
    err, allowed = rule_error(actual, ref64, lowprec)
    assert err <= allowed, f"{what}: max error {err:.3g} > allowed {allowed:.3g} (2× PyTorch low-precision error)"


def check_selection(scores64: Tensor, index: Tensor, ref_index: Tensor, score_err: float, what: str) -> int:
    """Validate a selection over the columns of scores64 (B, N).

    index / ref_index: (B, k) positions (ascending) chosen by the backend / by the reference.
    Returns how many rows were compared exactly. Each row must be ascending, unique, and no dropped score may
    exceed a kept one by more than the score error; rows whose k-th/(k+1)-th margin exceeds the error must
    equal the reference exactly.
    """
    B, N = scores64.shape
    k = index.shape[1]
    assert index.dtype == torch.int64, f"{what}: index dtype {index.dtype}"
    assert ((index >= 0) & (index < N)).all(), f"{what}: index out of range: {index}"
    assert (index.diff(dim=1) > 0).all(), f"{what}: index not strictly ascending: {index}"
    s = scores64.nan_to_num(float("-inf"))  # NaN ranks lowest
    exact = 0
    for b in range(B):
        kept = torch.zeros(N, dtype=torch.bool)
        kept[index[b].cpu()] = True
        if k < N:
            worst_kept = s[b][kept].min()
            best_dropped = s[b][~kept].max()
            assert best_dropped <= worst_kept + score_err, (
                f"{what}: row {b} dropped a score {best_dropped:.6g} above a kept one {worst_kept:.6g}")
            ordered = s[b].sort(descending=True).values
            if ordered[k - 1] - ordered[k] > 2 * score_err:
                assert torch.equal(index[b].cpu(), ref_index[b].cpu()), f"{what}: row {b} index differs"
                exact += 1
        else:
            exact += 1
    return exact


# --- official-style eager computations in the input precision (the low-precision baselines) -----------------


def eager_patch_pool(tokens: Tensor, index: Tensor, pos: Tensor | None, score: str) -> tuple[Tensor, Tensor]:
    """APViT's order of operations in the input dtype: add pos to every token, score, gather."""
    t = tokens if pos is None else tokens + pos.to(tokens.dtype)
    raw = tokens
    scores = {
        "l1": lambda: raw.abs().sum(-1),
        "sum": lambda: raw.sum(-1),
        "l2": lambda: (raw * raw).sum(-1),
        "max": lambda: raw.amax(-1),
        "max_abs": lambda: raw.abs().amax(-1),
    }[score]()
    picked = t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
    return picked, scores


def eager_cls_scores(qkv: Tensor, scale: float, score: str) -> Tensor:
    q0 = qkv[:, 0, 0]  # (B, H, D)
    k = qkv[:, :, 1].transpose(1, 2)  # (B, H, N, D)
    logits = (k @ q0.unsqueeze(-1)).squeeze(-1) * scale  # (B, H, N), input dtype
    return logits.sum(1) if score == "logit_sum" else logits.softmax(-1).mean(1)


def eager_attend(qkv: Tensor, index: Tensor, scale: float) -> Tensor:
    """Materialised attention in the input dtype, as the official code computes it (q·kᵀ·scale, softmax, ·v)."""
    B, N, _, H, D = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    M = index.shape[1]
    q = q.gather(2, index[:, None, :, None].expand(B, H, M, D))
    attn = ((q @ k.transpose(-1, -2)) * scale).softmax(-1)
    return (attn @ v).transpose(1, 2).reshape(B, M, H * D)


def cls_scores64(qkv: Tensor, scale: float, score: str) -> Tensor:
    q0 = qkv[:, 0, 0].double()
    k = qkv[:, :, 1].double().transpose(1, 2)
    return reference.cls_scores(q0, k, scale, score)


def check_backward(backend, dtype, case, device):
    """d(qkv) of ``backend`` against the fp64 reference by the tolerance rule; dropped query rows get exactly 0."""
    B, N, H, D, keep = case
    torch.manual_seed(N + D)
    qkv = torch.randn(B, N, 3, H, D, device=device).to(dtype)
    q1 = qkv.clone().requires_grad_()
    out, index, _ = token_pool_attention(q1, keep, backend=backend)
    grad = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, q1, grad)
    scale = D**-0.5
    q64 = qkv.double().requires_grad_()
    (ref,) = torch.autograd.grad(reference.attend(q64, index, scale)[0], q64, grad.double())
    ql = qkv.clone().requires_grad_()
    (low,) = torch.autograd.grad(eager_attend(ql, index, scale), ql, grad)
    for slot, name in enumerate("qkv"):
        assert_rule(dqkv[:, :, slot], ref[:, :, slot], low[:, :, slot], f"{backend} d{name}")
    if keep is not None:  # dropped query rows receive exactly zero
        dropped = torch.ones(B, N, dtype=torch.bool, device=device).scatter_(1, index, False)
        assert (dqkv[:, :, 0][dropped] == 0).all()
