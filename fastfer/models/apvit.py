"""APViT: IR-50 trunk → 1×1 projection → Attentive Patch Pooling → ViT blocks with Attentive Token Pooling.

Xue et al., "Vision Transformer with Attentive Pooling for Robust Facial Expression Recognition", IEEE TAFFC
2022 (arXiv 2212.05463); official code youqingxiaozhua/APViT (Apache-2.0). Written from the specification
(`docs/models/apvit.md`), not copied. The official code's batch-size pruning guard, int16 CLS index and undefined
tie order are deliberately not reproduced: blocks always prune when they keep fewer tokens, indices are
int64, ties go to the lower position.

State-dict keys (fastfer layout): ``extractor.*`` (IR trunk, as in the official checkpoint), ``proj.*``
(official ``vit.projs.0``), ``cls_token``, ``cls_pos_embed``, ``patch_pos_embed``, ``blocks.{i}.*``,
``norm.*`` (official ``vit.*``), ``head.*`` (official ``head.fc``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from timm.layers import trunc_normal_
from timm.models import checkpoint, checkpoint_seq
from torch import Tensor, nn

from fastfer.models._common import check_output_fmt, default_label_names, scatter_to_grid, take_indices, tracing
from fastfer.models.irse import IRSE
from fastfer.nn import AttentivePatchPool, PoolingBlock
from fastfer.nn.functional import patch_pool

GLOBAL_POOLS = ("token", "avg", "")

# The paper configuration (RAF-DB release): 65,209,543 parameters with 7 classes.
APVIT_CONFIG = dict(
    ir_layers=50, ir_stages=3, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, patch_keep=160,
    keep_rates=(1.0,) * 4 + (0.9,) * 4,
)
# CPU-trainable variant with the same mechanics (APP K < N, ATP in the later blocks), 0.71 M parameters:
# a stride-2 stem and two one-unit IR stages (widths 16, 32) still give a 14×14 map at 112², so the APP map
# keeps the paper's resolution; APP keeps 96 of 196; 4 blocks of width 128 (4 heads of 32), ATP at rate 0.9
# in the last two (97 → 97 → 97 → 87 → 78 tokens). Full-resolution stages at 112² cost 3× more per step on
# CPU (convolution backward dominates), hence the strided stem.
APVIT_TINY_CONFIG = dict(
    ir_layers=50, ir_stages=2, ir_units=(1, 1), ir_widths=(16, 32), ir_stem_stride=2, embed_dim=128, depth=4,
    num_heads=4, mlp_ratio=3.0, patch_keep=96, keep_rates=(1.0, 1.0, 0.9, 0.9),
)


def _as_size(img_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"img_size: expected a positive int or (H, W), got {img_size!r}")
    return size


class APViT(nn.Module):
    """APViT classifier.

    Args:
        num_classes: classifier outputs (0 → no head; ``forward`` returns pooled features).
        in_chans: must be 3 (accepted for timm's factory).
        img_size: input size, int or (H, W); 112 in the paper. The trunk map has (H/2**s)·(W/2**s) positions.
        ir_layers, ir_stages, ir_units, ir_widths, ir_mode: the IR trunk (:class:`IRSE`); paper: IR-50, 3 stages.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps: the ViT (paper: 768, 8, 8, 3, False, 1e-6).
        patch_keep: APP's K, positions kept out of the trunk map (None keeps all); paper 160 of 196.
        patch_score: APP score over channels (``l1`` in the paper).
        keep_rates: ATP keep rate per block (1 = no pooling); keep = max(int((N-1)·rate), 1).
        token_score: ATP CLS-row score (``logit_sum`` in the paper).
        attn_scale: attention scale; None → head_dim**-0.5 (96**-0.5 in the paper).
        drop_path_rate: stochastic depth, linearly increasing over blocks (0 in the paper).
        global_pool: ``token`` (CLS, the paper), ``avg`` (mean of the remaining patch tokens) or ``''``.
        label_names: class names in logit order; default: the canonical order when num_classes is 7 or 8.
        head_init_std: 0 (the paper's LinearClsHead) starts the classifier at zero; > 0 draws its weights from a
            trunc-normal of that std, so gradients reach the ViT from the first step (from scratch the zero head
            left the demo model's ViT at chance for several epochs; see the synthetic recipe).

    ``forward(x)``: x (B, 3, H, W) normalised RGB → logits (B, num_classes).
    ``forward_features(x)`` → tokens after the final LayerNorm (B, M, embed_dim), M = 1 + tokens left after
    the last pooling block (105 in the paper); with ``return_details=True`` also a dict (see there).
    ``forward_intermediates(x)`` → the blocks' outputs (timm's ViT contract; ``feature_info`` lists one level per
    block at reduction 8); as NCHW maps they put each surviving patch token back at its trunk-grid position
    (pooled-away positions are 0).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 3,
        img_size: Union[int, Sequence[int]] = 112,
        ir_layers: int = 50,
        ir_stages: int = 3,
        ir_units: Optional[Sequence[int]] = None,
        ir_widths: Optional[Sequence[int]] = None,
        ir_mode: str = "ir",
        ir_stem_stride: int = 1,
        embed_dim: int = 768,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        norm_eps: float = 1e-6,
        patch_keep: Optional[int] = 160,
        patch_score: str = "l1",
        keep_rates: Optional[Sequence[float]] = (1.0,) * 4 + (0.9,) * 4,
        token_score: str = "logit_sum",
        attn_scale: Optional[float] = None,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        label_names: Optional[Sequence[str]] = None,
        head_init_std: float = 0.0,
    ):
        super().__init__()
        if isinstance(head_init_std, bool) or not isinstance(head_init_std, (int, float)) or not head_init_std >= 0:
            raise ValueError(f"head_init_std: expected a number >= 0, got {head_init_std!r}")
        self.head_init_std = float(head_init_std)
        if in_chans != 3:
            raise ValueError(f"in_chans: APViT's IR trunk takes RGB input, expected 3, got {in_chans!r}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool: expected one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.img_size = _as_size(img_size)
        self.extractor = IRSE(ir_layers, ir_mode, ir_stages, units=ir_units, widths=ir_widths,
                              stem_stride=ir_stem_stride)
        red = self.extractor.reduction
        if any(s % red for s in self.img_size):
            raise ValueError(f"img_size: expected multiples of {red} (trunk stride), got {self.img_size}")
        self.grid_size = (self.img_size[0] // red, self.img_size[1] // red)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if patch_keep is not None and (isinstance(patch_keep, bool) or not isinstance(patch_keep, int)
                                       or not 1 <= patch_keep <= self.num_patches):
            raise ValueError(f"patch_keep: expected an int in 1..{self.num_patches} (positions of the "
                             f"{self.grid_size[0]}×{self.grid_size[1]} trunk map) or None, got {patch_keep!r}")
        keep_rates = (1.0,) * depth if keep_rates is None else tuple(float(r) for r in keep_rates)
        if len(keep_rates) != depth:
            raise ValueError(f"keep_rates: expected one rate per block (depth={depth}), got {len(keep_rates)}")

        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool = global_pool
        self.patch_keep = patch_keep
        self.keep_rates = keep_rates

        self.proj = nn.Conv2d(self.extractor.out_channels, embed_dim, 1)
        self.patch_pool = AttentivePatchPool(patch_keep or self.num_patches, patch_score)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule, host-side
        self.blocks = nn.Sequential(*[
            PoolingBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, keep_rate=rate, score=token_score,
                         scale=attn_scale, drop_path=dpr[i], norm_eps=norm_eps)
            for i, rate in enumerate(keep_rates)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.label_names = default_label_names(num_classes, label_names)
        self.grad_checkpointing = False
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=red) for i in range(depth)]
        self.init_weights()

    def init_weights(self) -> None:
        """Official initialisation: trunc-normal(0.02) tokens and ViT linears, zero cls pos-embed and head."""
        trunc_normal_(self.patch_pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.cls_pos_embed)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):  # APViT's LinearClsHead starts at zero (head_init_std 0)
            nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)
            if self.head_init_std > 0:
                trunc_normal_(self.head.weight, std=self.head_init_std)

    # --- timm model contract ----------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The keys the official config meant to exempt (its substring match likely never fired; docs/models/apvit.md §8)."""
        return {"cls_token", "cls_pos_embed", "patch_pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: trunk + projection + tokens first, then each block."""
        return dict(stem=r"^extractor|^proj|^cls_token|^cls_pos_embed|^patch_pos_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         label_names: Optional[Sequence[str]] = None) -> None:
        """New head of ``num_classes`` outputs (0 → none), initialised as at construction (zero unless
        ``head_init_std``); optionally a new pooling mode
        (``''``: ``forward`` returns the unpooled tokens)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool: expected one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        old = self.head
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(old, nn.Linear):
            self.head.to(device=old.weight.device, dtype=old.weight.dtype)
        self._init_head()
        self.label_names = default_label_names(num_classes, label_names)

    # --- forward ----------------------------------------------------------------------------------------------

    def _trunk(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → projected trunk map (B, embed_dim, gh, gw); the input is checked in eager mode."""
        if not tracing(x) and (x.dim() != 4 or tuple(x.shape[1:]) != (3, *self.img_size)):
            raise ValueError(f"x: expected a (B, 3, {self.img_size[0]}, {self.img_size[1]}) image batch, "
                             f"got shape {tuple(x.shape)}")
        return self.proj(self.extractor(x))

    def _with_cls(self, tokens: Tensor) -> Tensor:
        cls = (self.cls_token + self.cls_pos_embed).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _embed_with_positions(self, x: Tensor):
        """x → (tokens (B, 1+K, C) CLS first, APP's kept grid positions (B, K) ascending, APP scores (B, N))."""
        app = patch_pool(self._trunk(x), self.patch_pool.k, pos=self.patch_pos_embed[0], score=self.patch_pool.score)
        return self._with_cls(app.tokens), app.index, app.scores

    def _run_block(self, blk: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk.forward_with_index, x)
        return blk.forward_with_index(x)

    def forward_features(self, x: Tensor, return_details: bool = False):
        """x (B, 3, H, W) → tokens (B, M, embed_dim) after the final LayerNorm, CLS first.

        With ``return_details=True`` returns ``(tokens, details)``; details holds ``app_scores`` (B, gh, gw)
        fp32 APP score map, ``app_index`` (B, K) kept grid positions (ascending), ``block_index`` list per
        block of (B, M_i) indices into that block's input tokens (CLS = 0 first; 0..N-1 when the block keeps
        all), ``token_positions`` list per block of (B, M_i - 1) grid positions of the patch tokens that survive
        the block.
        """
        if not return_details:
            tokens = self.patch_pool(self._trunk(x), pos=self.patch_pos_embed[0])  # (B, K, C), pos-embed included
            x = self._with_cls(tokens)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint_seq(self.blocks, x)
            else:
                x = self.blocks(x)
            return self.norm(x)
        x, pos, scores = self._embed_with_positions(x)
        app_index, block_index, positions = pos, [], []
        for blk in self.blocks:
            x, index = self._run_block(blk, x)
            block_index.append(index)
            if blk.attn.pools:
                pos = pos.gather(1, index[:, 1:] - 1)
            positions.append(pos)
        details = dict(app_scores=scores.reshape(-1, *self.grid_size), app_index=app_index,
                       block_index=block_index, token_positions=positions)
        return self.norm(x), details

    def forward_intermediates(self, x: Tensor, indices: Union[None, int, Sequence[int]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Block outputs as timm's ViT returns them.

        Args:
            x: (B, 3, H, W) images.
            indices: blocks to return: None all, int n the last n, a sequence of indices (negative from the end).
            return_prefix_tokens: return (features, CLS token (B, 1, C)) pairs.
            norm: apply the final LayerNorm to each intermediate.
            stop_early: run no block after the last one asked for (the final output is then that block's).
            output_fmt: ``NCHW`` (B, C, gh, gw) maps, each surviving patch token at its trunk-grid position and
                0 where APP or ATP dropped the token; ``NLC`` (B, M_i - 1, C) the surviving patch tokens in
                positional order (M_i shrinks in the pooling blocks).
            intermediates_only: return only the list.

        Returns:
            ``(final tokens (B, M, C) after the final norm, [intermediates])``, or the list alone.
        """
        fmt = check_output_fmt(output_fmt)
        taken, max_index = take_indices(len(self.blocks), indices)
        x, pos, _ = self._embed_with_positions(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x, index = self._run_block(blk, x)
            if blk.attn.pools:
                pos = pos.gather(1, index[:, 1:] - 1)
            if i in taken:
                y = self.norm(x) if norm else x
                feat = scatter_to_grid(y[:, 1:], pos, self.grid_size) if fmt == "NCHW" else y[:, 1:]
                intermediates.append((feat, y[:, :1]) if return_prefix_tokens else feat)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / the head); returns the kept
        absolute indices (timm's FeatureGetterNet calls this for ``features_only=True``)."""
        taken, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, M, C) → logits (B, num_classes), or pooled features (B, C) with ``pre_logits``;
        with ``global_pool=''`` the tokens stay unpooled (B, M, ·)."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def token_counts(self) -> list[int]:
        """Tokens entering the first block, then after each block (CLS included): paper 161, 161, …, 105."""
        n = 1 + (self.patch_keep or self.num_patches)
        counts = [n]
        for blk in self.blocks:
            keep = blk.attn.keep_count(n)
            n = n if keep is None else 1 + keep
            counts.append(n)
        return counts
