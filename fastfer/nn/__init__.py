"""Layers built on fastfer's fused ops, for the library's models and for users' own models."""
from fastfer.nn.attention import Attention, TokenPoolAttention, keep_count
from fastfer.nn.block import PoolingBlock, gather_tokens
from fastfer.nn.patch_pool import AttentivePatchPool

__all__ = ["Attention", "AttentivePatchPool", "PoolingBlock", "TokenPoolAttention", "gather_tokens", "keep_count"]
