"""The Triton backend's implementation namespace (signatures of :mod:`fastfer.ops.reference`)."""
from __future__ import annotations

from fastfer.ops.backends.triton import attention, cls_select, patch_pool as _patch_pool


def patch_pool(x, k, pos, score):
    return _patch_pool.patch_pool_forward(x, k, pos, score)


def patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype):
    return _patch_pool.patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype)


def token_pool_attention(qkv, keep, scale, score):
    index, scores = cls_select.cls_select(qkv, keep, scale, score)
    out, lse = attention.attention_forward(qkv, index, scale)
    return out, index, scores, lse


def token_pool_attention_backward(grad_out, qkv, out, lse, index, scale):
    return attention.attention_backward(grad_out, qkv, out, lse, index, scale)
