"""Fused drop-in replacements for timm's ViT ``Block`` and ``Attention`` (what :func:`fastfer.patch` installs).

They hold the timm modules' own submodules (``qkv``, ``proj``, norms, MLP, LayerScale ...), never copies, and
register them under timm's names in timm's order, so a patched model has the same parameters, the same
``state_dict`` keys and the same outputs as before (up to rounding), and training updates the original weights.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from torch import Tensor, nn

from fastfer.nn.attention import TokenPoolAttention
from fastfer.ops import MAX_HEAD_DIM
from fastfer.nn.block import gather_tokens


def type_name(module: object) -> str:
    """Qualified class name of a module (or of a class), e.g. ``timm.models.vision_transformer.Block``."""
    cls = module if isinstance(module, type) else type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_timm_attention(attn: nn.Module, where: str) -> None:
    """Raise an error naming ``where`` and the module type when the fused op cannot reproduce ``attn``."""
    if type(attn) is not TimmAttention:
        raise TypeError(f"{where}: {type_name(attn)} is not supported; fastfer.patch replaces timm's "
                        f"{type_name(TimmAttention)} (packed qkv Linear, softmax attention) only")
    if getattr(attn, "gate", None) is not None:
        raise ValueError(f"{where}: gated attention (timm Attention(gated=True)) is not supported by the fused op")
    p = float(attn.attn_drop.p)
    if p > 0:
        raise ValueError(f"{where}.attn_drop: expected p=0 (the fused op has no attention dropout), got p={p}; "
                         f"create the model with attn_drop_rate=0 or set {where}.attn_drop.p = 0 before patching")
    if attn.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"{where}: expected a head dim ≤ {MAX_HEAD_DIM} for the fused op, got {attn.head_dim}")


def check_timm_block(block: nn.Module, where: str) -> None:
    """Raise an error naming ``where`` unless ``block`` is a timm ViT Block whose attention can be fused."""
    if type(block) is not TimmBlock:
        raise TypeError(f"{where}: {type_name(block)} is not supported; fastfer.patch replaces "
                        f"{type_name(TimmBlock)} (pre-norm attention + MLP) only")
    check_timm_attention(block.attn, f"{where}.attn")


class FusedViTAttention(TokenPoolAttention):
    """timm ViT attention on the fused op, optionally pooling tokens; holds ``attn``'s own modules.

    ``forward(x)``: x (B, N, C), token 0 = CLS → (y (B, M, C), index (B, M) or None), as
    :class:`TokenPoolAttention`. Applies timm's ``q_norm`` / ``k_norm`` (to q and k before the op) and
    ``norm`` (scale norm, to the attention output before ``proj``) when they are not Identity.
    ``score`` defaults to ``prob_mean`` (EViT) and ``keep_rule`` to ``evit`` (ceil(rate·(N-1))).
    """

    def __init__(self, attn: TimmAttention, keep_rate: Optional[float] = None, score: str = "prob_mean",
                 keep_rule: str = "evit"):
        check_timm_attention(attn, "attn")
        # Skip Attention.__init__ on purpose: it would allocate new Linear layers; this module adopts attn's.
        nn.Module.__init__(self)
        self._init_heads(attn.num_heads * attn.head_dim, attn.num_heads, attn.scale)
        self._init_pooling(keep_rate, None, score, keep_rule)
        # Same names and order as timm's Attention → identical state_dict keys.
        self.qkv = attn.qkv
        self.q_norm = getattr(attn, "q_norm", nn.Identity())
        self.k_norm = getattr(attn, "k_norm", nn.Identity())
        self.norm = getattr(attn, "norm", nn.Identity())
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.qk_norm = not (isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity))
        self.train(attn.training)

    def _qkv(self, x: Tensor) -> Tensor:
        qkv = super()._qkv(x)  # (B, N, 3, H, D)
        if self.qk_norm:
            # timm normalises q and k over the head dim; the (B, N, H, D) layout gives the same result.
            q, k, v = qkv.unbind(2)
            qkv = torch.stack((self.q_norm(q), self.k_norm(k), v), dim=2)
        return qkv

    def _project(self, out: Tensor) -> Tensor:
        return self.proj_drop(self.proj(self.norm(out)))


class FusedViTBlock(nn.Module):
    """timm ViT ``Block`` on the fused op: x → x + ls1(attn(norm1 x)) → gather kept tokens → + ls2(mlp(norm2 x)).

    ``forward(x)``: x (B, N, C) with CLS at 0 → (B, M, C); M = N unless ``keep_rate`` < 1 drops tokens.
    The residual is gathered after the attention residual and before the MLP (where EViT and APViT prune).
    Holds ``block``'s norm1, ls1, drop_path1, norm2, mlp, ls2, drop_path2 and a :class:`FusedViTAttention`
    over ``block.attn``'s modules. ``attn_mask`` / ``is_causal`` are not supported.
    """

    def __init__(self, block: TimmBlock, keep_rate: Optional[float] = None, score: str = "prob_mean",
                 keep_rule: str = "evit"):
        super().__init__()
        check_timm_block(block, "block")
        self.norm1 = block.norm1
        self.attn = FusedViTAttention(block.attn, keep_rate=keep_rate, score=score, keep_rule=keep_rule)
        self.ls1 = block.ls1
        self.drop_path1 = block.drop_path1
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.ls2 = block.ls2
        self.drop_path2 = block.drop_path2
        self.train(block.training)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal: not supported by fastfer's fused attention; "
                             "call fastfer.unpatch(model) to run masked attention")
        y, index = self.attn(self.norm1(x))
        if self.attn.pools:
            x = gather_tokens(x, index)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
