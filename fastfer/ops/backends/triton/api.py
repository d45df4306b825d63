"""The Triton backend's implementation namespace (signatures of :mod:`fastfer.ops.reference`)."""
from __future__ import annotations

from fastfer.ops.backends.triton import attention, cls_select, patch_pool as _patch_pool


def patch_pool(x, k, pos, score):
    return _patch_pool.patch_pool_forward(x, k, pos, score)


def patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype):
    return _patch_pool.patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype)


def token_pool_attention(qkv, keep, scale, score):
    """keep given: scoring + selection (2 launches), then attention of the kept rows. keep=None: one attention
    launch that also writes the index and each head's CLS row; ``cls_scores`` is then their sum (logit_sum) or
    mean (prob_mean) over heads — a (B, H, N) reduction instead of a scoring pass over all keys."""
    if keep is None:
        rows_kind = attention.CLS_LOGITS if score == "logit_sum" else attention.CLS_PROBS
        out, lse, index, rows = attention.attention_forward(qkv, None, scale, rows_kind)
        scores = rows.sum(1) if score == "logit_sum" else rows.mean(1)
        return out, index, scores, lse
    index, scores = cls_select.cls_select(qkv, keep, scale, score)
    out, lse, _, _ = attention.attention_forward(qkv, index, scale)
    return out, index, scores, lse


def token_pool_attention_backward(grad_out, qkv, out, lse, index, scale):
    return attention.attention_backward(grad_out, qkv, out, lse, index, scale)
