"""Shared setup of the extension tests: the built extension (or a skip that says why it cannot be built),
and forward checks of a backend against the reference by the tolerance rule (docs/design.md §4).

A build that can start but fails is an error, not a skip: C++ that does not compile must fail the suite.
"""
from __future__ import annotations

import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends.ext import build as _ext
from tests.ops.helpers import (
    assert_rule, check_selection, cls_scores64, eager_attend, eager_cls_scores, eager_patch_pool, rule_error,
)


def require_extension(kind: str):
    """The loaded ``kind`` extension module, JIT-built into the cache on first use (about a minute)."""
    if not _ext.ready(kind):
        reasons = _ext.prerequisites(kind)
        if reasons:
            pytest.skip(f"the {kind} extension cannot be built here: " + "; ".join(reasons))
    return _ext.load(kind)


def check_patch_pool(backend, x, k, pos, score):
    """patch_pool on ``backend`` against the reference by the tolerance rule; returns (tokens, index)."""
    tokens, index, scores = fastfer.patch_pool(x, k, pos=pos, score=score, backend=backend)
    as_tok = reference.as_tokens(x)
    exact = {"l1": lambda t: t.abs().sum(-1), "sum": lambda t: t.sum(-1), "l2": lambda t: (t * t).sum(-1),
             "max": lambda t: t.amax(-1), "max_abs": lambda t: t.abs().amax(-1)}[score](as_tok.double())
    low_tokens, low_scores = eager_patch_pool(as_tok, index, pos, score)
    assert_rule(scores, exact, low_scores, f"{backend} scores {score}")
    err, _ = rule_error(scores, exact, low_scores)
    _, ref_index, _ = reference.patch_pool(x, k, pos, score)
    check_selection(exact.cpu(), index.cpu(), ref_index.cpu(), err + 1e-6, f"{backend} index {score}")
    ref64 = reference.gather_tokens(as_tok.double(), index, None if pos is None else pos.double())
    assert_rule(tokens, ref64, low_tokens, f"{backend} tokens")
    return tokens, index


def check_token_pool(backend, qkv, keep, score, scale=None):
    """token_pool_attention on ``backend`` against the reference by the tolerance rule; returns (out, index)."""
    B, N, _, H, D = qkv.shape
    scale = D**-0.5 if scale is None else scale
    with fastfer.use_backend(backend):
        out, index, scores, lse = torch.ops.fastfer.token_pool_attention(qkv, keep, scale, score)
    s64 = cls_scores64(qkv, scale, score)
    low_scores = eager_cls_scores(qkv, scale, score)
    assert_rule(scores, s64, low_scores, f"{backend} cls_scores {score}")
    if keep is None:
        assert torch.equal(index, torch.arange(N, device=index.device).expand(B, N))
    else:
        err, _ = rule_error(scores, s64, low_scores)
        ref_index = reference.token_pool_attention(qkv, keep, scale, score)[1]
        assert (index[:, 0] == 0).all()
        check_selection(s64[:, 1:].cpu(), index[:, 1:].cpu() - 1, ref_index[:, 1:].cpu() - 1, err + 1e-6,
                        f"{backend} index {score}")
    out64, lse64 = reference.attend(qkv.double(), index, scale)
    assert_rule(out, out64, eager_attend(qkv, index, scale), f"{backend} out")
    assert_rule(lse, lse64, reference.attend(qkv, index, scale)[1], f"{backend} lse")
    return out, index
