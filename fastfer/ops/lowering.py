"""Lowering fastfer's custom ops to plain ATen for export (``torch.export`` programs and ONNX).

``torch.export`` keeps ``fastfer::patch_pool`` / ``fastfer::token_pool_attention`` as opaque custom-op nodes
(their fake kernels make them traceable); a program that contains them needs ``import fastfer`` to run and no
ONNX runtime knows them. Two ways to get plain ATen (same static k / keep counts):

- :func:`reference_ops` — a context in which the public ``fastfer.ops.patch_pool`` /
  ``fastfer.ops.token_pool_attention`` compute the pure-PyTorch reference (:mod:`fastfer.ops.reference`)
  instead of calling the custom ops, so ``torch.export`` traces ATen directly;
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
    def patch_pool(x: Tensor, k: int, pos: Optional[Tensor], score: str, *_ignored):
        if not portable:
            return reference.patch_pool(x, k, pos, score)
        tokens = reference.as_tokens(x)
        scores = reference.patch_scores(tokens, score)
        index = select_topk_portable(scores, k)
        return reference.gather_tokens(tokens, index, pos), index, scores

    return patch_pool


def _token_pool_attention(portable: bool):
    def token_pool_attention(qkv: Tensor, keep: Optional[int], scale: Optional[float], score: str, *_ignored):
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


_ACTIVE: list[Optional[bool]] = [None]  # None: custom ops; else the ``portable`` flag of the active block


def active() -> Optional[bool]:
    """None outside :func:`reference_ops`; inside, whether the portable (ONNX) selection is asked for."""
    return _ACTIVE[0]


@contextlib.contextmanager
def reference_ops(portable: bool = False) -> Iterator[None]:
    """Within the block, :func:`fastfer.ops.patch_pool` and :func:`fastfer.ops.token_pool_attention` compute
    the reference decomposition instead of calling the custom ops: same outputs, traceable as plain ATen. The
    public op functions check this flag themselves, so every way of reaching them (``fastfer.nn`` layers,
    ``fastfer.functional``, a name imported before the block) is covered. Process-global while active (do not
    run fused models in other threads meanwhile); a program exported before the block still holds custom-op
    nodes, which :func:`decompose` rewrites."""
    previous = _ACTIVE[0]
    _ACTIVE[0] = bool(portable)
    try:
        yield
    finally:
        _ACTIVE[0] = previous


def patch_pool_reference(x: Tensor, k: int, pos: Optional[Tensor], score: str, portable: bool):
    """(tokens, index, scores) of the reference, with the portable selection when asked."""
    return _patch_pool(portable)(x, k, pos, score)


def token_pool_attention_reference(qkv: Tensor, keep: Optional[int], scale: Optional[float], score: str,
                                   portable: bool):
    """(out, index, cls_scores, lse) of the reference, with the portable selection when asked."""
    return _token_pool_attention(portable)(qkv, keep, scale, score)


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
