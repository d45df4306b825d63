"""Lowering fastfer's custom ops to plain ATen for export (``torch.export`` programs and ONNX).

``torch.export`` keeps ``fastfer::patch_pool`` / ``fastfer::token_pool_attention`` as opaque custom-op nodes
(their fake kernels make them traceable); a program that contains them needs ``import fastfer`` to run and no
ONNX runtime knows them. Two ways to get plain ATen (same static k / keep counts):

- :func:`reference_ops` — a context in which the public ``fastfer.ops.patch_pool`` /
  ``fastfer.ops.token_pool_attention`` compute the pure-PyTorch reference (:mod:`fastfer.ops.reference`)
  instead of calling the custom ops, so ``torch.export`` traces ATen directly (what ``fastfer.nn`` modules call);
- :func:`decompose` — rewrites custom-op nodes left in an exported program into the same reference (a full
  retrace: ~3× the export time for APViT-tiny, hence the context first and this as the safety net).

Two flavours of the top-k selection:

- ``portable=False`` (``torch.export`` programs): the reference itself — stable sorts, ties to the lower
  position, NaN below -inf.
- ``portable=True`` (ONNX): ``topk`` + ascending sort of the chosen positions, because ONNX has no stable sort
  (the dynamo exporter has no translation for ``aten.sort.stable``). ONNX's TopK defines ties the same way
  (equal values: lower index first), so kept indices agree with the reference; the one difference is that NaN
  scores rank equal to -inf instead of below it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import Tensor

from fastfer.ops import reference


def select_topk_portable(scores: Tensor, k: int) -> Tensor:
    """(B, N) float scores → (B, k) int64 positions of the k highest, ascending; NaN counts as -inf."""
    filled = scores.masked_fill(scores.isnan(), -math.inf)
    return torch.topk(filled, k, dim=-1, largest=True, sorted=True).indices.sort(dim=-1).values


def _patch_pool(portable: bool):
    def patch_pool(x: Tensor, k: int, pos: Optional[Tensor], score: str, backend: Optional[str]):
        if not portable:
            return reference.patch_pool(x, k, pos, score)
        tokens = reference.as_tokens(x)
        scores = reference.patch_scores(tokens, score)
        index = select_topk_portable(scores, k)
        return reference.gather_tokens(tokens, index, pos), index, scores

    return patch_pool


def _token_pool_attention(portable: bool):
    def token_pool_attention(qkv: Tensor, keep: Optional[int], scale: Optional[float], score: str,
                             backend: Optional[str]):
        if not portable:
            return reference.token_pool_attention(qkv, keep, scale, score)
        B, N, _, H, D = qkv.shape
        scale = D**-0.5 if scale is None else scale
        acc = reference.accumulation_dtype(qkv.dtype)
        q0 = qkv[:, 0, 0].detach().to(acc)  # (B, H, D)
        k = qkv[:, :, 1].detach().to(acc).transpose(1, 2)  # (B, H, N, D)
        cls_scores = reference.cls_scores(q0, k, scale, score).float()
        if keep is None:
            index = torch.arange(N, device=qkv.device).expand(B, N).contiguous()
        else:
            kept = select_topk_portable(cls_scores[:, 1:], keep) + 1
            index = torch.cat([kept.new_zeros(B, 1), kept], dim=1)
        out, lse = reference.attend(qkv, index, scale)
        return out, index, cls_scores, lse

    return token_pool_attention


@contextlib.contextmanager
def reference_ops(portable: bool = False) -> Iterator[None]:
    """Within the block, ``fastfer.ops.patch_pool`` and ``fastfer.ops.token_pool_attention`` (also the
    ``fastfer.*`` aliases) run the reference decomposition instead of the custom ops: same outputs, traceable as
    plain ATen. Process-global while active (do not run fused models in other threads meanwhile); code that
    imported the functions by name before the block keeps the custom ops (:func:`decompose` catches those)."""
    import fastfer
    from fastfer import ops as ops_pkg

    pool_impl, attn_impl = _patch_pool(portable), _token_pool_attention(portable)

    def patch_pool(x: Tensor, k: int, *, pos: Optional[Tensor] = None, score: str = "l1",
                   backend: Optional[str] = None):
        return ops_pkg.PatchPoolOutput(*pool_impl(x, k, pos, score, backend))

    def token_pool_attention(qkv: Tensor, keep: Optional[int] = None, *, scale: Optional[float] = None,
                             score: str = "logit_sum", backend: Optional[str] = None):
        out, index, cls_scores, _lse = attn_impl(qkv, keep, scale, score, backend)
        return ops_pkg.TokenPoolOutput(out, index, cls_scores)

    targets = [m for m in (ops_pkg, fastfer) if hasattr(m, "patch_pool")]
    saved = [(m, m.patch_pool, m.token_pool_attention) for m in targets]
    try:
        for m in targets:
            m.patch_pool, m.token_pool_attention = patch_pool, token_pool_attention
        yield
    finally:
        for m, pool, attn in saved:
            m.patch_pool, m.token_pool_attention = pool, attn


def decomposition_table(portable: bool = False) -> dict:
    """{custom op overload: reference implementation} for ``ExportedProgram.run_decompositions``."""
    ops = torch.ops.fastfer
    return {
        ops.patch_pool.default: _patch_pool(portable),
        ops.token_pool_attention.default: _token_pool_attention(portable),
    }


def decompose(program: "torch.export.ExportedProgram", portable: bool = False) -> "torch.export.ExportedProgram":
    """The same program with every fastfer custom op replaced by its reference decomposition (plain ATen)."""
    import fastfer.ops  # noqa: F401 — the ops must be registered before their overloads can be looked up

    return program.run_decompositions(decomposition_table(portable))


def custom_op_nodes(program: "torch.export.ExportedProgram") -> list[str]:
    """Names of the fastfer custom-op calls left in a program's graph (empty after :func:`decompose`)."""
    return [str(n.target) for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("fastfer.")]
