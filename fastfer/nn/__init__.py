"""Layers built on fastfer's fused ops, for the library's models and for users' own models.

- :class:`AttentivePatchPool` — keep the k most active positions of a CNN map as tokens (APViT APP).
- :class:`Attention` — fused multi-head self-attention (no pooling).
- :class:`TokenPoolAttention` — attention that also keeps the top tokens by CLS score (APViT ATP / EViT).
- :class:`PoolingBlock` — pre-norm ViT block: attention → residual → gather kept tokens → MLP.
- :class:`FusedViTBlock` / :class:`FusedViTAttention` — drop-ins for timm's ViT Block / Attention that adopt
  the timm modules' weights, installed by :func:`patch` (undone by :func:`unpatch`).

Layers take no backend: the ops choose one (pin it with ``fastfer.ops.use_backend``).
"""
from fastfer.nn.attention import KEEP_RULES, Attention, TokenPoolAttention, keep_count
from fastfer.nn.block import PoolingBlock, gather_tokens, kept_positions
from fastfer.nn.patch_pool import AttentivePatchPool
from fastfer.nn.patching import PatchReport, patch, patch_report, unpatch
from fastfer.nn.timm_vit import FusedViTAttention, FusedViTBlock

__all__ = [
    "KEEP_RULES",
    "Attention",
    "AttentivePatchPool",
    "FusedViTAttention",
    "FusedViTBlock",
    "PatchReport",
    "PoolingBlock",
    "TokenPoolAttention",
    "gather_tokens",
    "keep_count",
    "kept_positions",
    "patch",
    "patch_report",
    "unpatch",
]
