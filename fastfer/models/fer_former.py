"""FER-former: IR-50 features → multi-granularity tokens → ViT with a label head and a CLIP-text head
(docs/models/ferformer.md; decisions D1–D12 override the released code where stated).

Pipeline at 112² (batch B, C classes)::

    x (B, 3, 112, 112), RAF-DB mean/std
    → backbone: IR-50 stages 1–3                                  (B, 256, 14, 14)
    → AdaptiveAvgPool2d(12)                                       (B, 256, 12, 12)
    → patch_embed: p×p patches, p = 2, 4, 6, 12, Linear(p·p·256 → 256) each, concatenated   (B, 50, 256)
    → token_norm: BatchNorm1d(50), per token position             (B, 50, 256)
    → [cls_token, clip_token] + tokens (zero-init, no pos-embed)  (B, 52, 256)
    → 16 pre-norm blocks (4 heads, MLP 1024, no qkv bias, no final norm) on the fused attention op
    → head: Linear(256, C) on token 0                             (B, C) label logits
    → text head: 100 · cos(token 1 (``text_token="clip"``) or token 0 (``"cls"``), text_proj(text_embed))

``text_embed`` [C, 512] holds frozen CLIP text features of "a face image of {label}", computed **once** by a
text encoder (:mod:`fastfer.models.text_encoder`) and stored as a buffer; forward only runs ``text_proj``
(512 → 256, trainable) and the normalisation on it. The text head (``text_proj`` and ``text_embed``) exists only
once text features exist — built by :meth:`FerFormer.build_text_features`, or adopted from a state_dict that
holds it — so every parameter of a model without text features is trained by ``forward``. Dead weight of the
released code (IR-50 stage 4 and output layer, the p = 3 projection, ``fc1``, ``pos_embed``) is not built (D10).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from torch import Tensor, nn

from fastfer.labels import EXPRESSIONS
from fastfer.models._common import (
    build_timm_model,
    check_choice,
    check_output_fmt,
    default_label_names,
    take_indices,
)
from fastfer.models.irse import IRSE
from fastfer.models.text_encoder import (
    DEFAULT_TEMPLATE,
    TEXT_DIM,
    TextEncoder,
    encode_labels,
    make_text_encoder,
)
from fastfer.nn import PoolingBlock

TEXT_TOKENS = ("clip", "cls")
GLOBAL_POOLS = ("token", "")
TOKEN_INITS = ("zeros", "trunc_normal")
HEAD_FUSIONS = ("cls", "text", "fused")
RAFDB_MEAN = (0.5751, 0.4491, 0.4006)
RAFDB_STD = (0.2064, 0.1888, 0.1803)

NO_TEXT_FEATURES = (
    "FER-former text head: no text features yet. Pass text_encoder=<tensor file (.safetensors with 'text_embed' "
    "[C, 512] + label_names/template metadata)> or text_encoder='open_clip:<local CLIP ViT-B/32 checkpoint>' when "
    "creating the model, call model.build_text_features(encoder), or load a state_dict that holds 'text_embed'. "
    "(The label head, model(x) with head_fusion='cls', needs none of these.)"
)
_TEXT_KEYS = ("text_embed", "text_proj.weight", "text_proj.bias")


class FerFormerOutput(NamedTuple):
    logits: Tensor  # (B, C) label head on token 0
    text_logits: Tensor  # (B, C) logit_scale · cos(image_feature, text_feature)
    image_feature: Tensor  # (B, D) L2-normalised token fed to the text head
    text_feature: Tensor  # (C, D) L2-normalised projected prompt features


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), p·p·C): non-overlapping p×p patches in raster order, each flattened
    (row-in-patch, col-in-patch, channel) with channel fastest — einops 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


class FerFormer(nn.Module):
    """FER-former (docs/models/ferformer.md), ``forward(x)`` → logits (B, C).

    Args:
        num_classes: 7 (RAF-DB) or 8 (+ contempt); label names default to the canonical order.
        label_names: class names in logit order (also the words of the text prompts).
        text_token: ``"clip"`` (default, D1: the text head reads output token 1) or ``"cls"`` (released code:
            token 0 feeds both heads; token 1 is only an extra key/value).
        head_fusion: what ``forward`` / ``forward_head`` return: ``"cls"`` label-head logits (default, the
            official metric), ``"text"`` similarity logits, or ``"fused"`` log of the mean of both softmaxes
            (its softmax is the fused probability). Training uses :meth:`forward_outputs` for both heads, so
            with ``"cls"`` the text head (if built) is trained only through it, and with ``"text"`` ``forward``
            does not reach the label head — both by design.
        global_pool: ``"token"`` (token 0 feeds the label head) or ``""`` (timm's unpooled mode: ``forward_head``
            keeps every token, (B, 2 + N, ·); only with ``head_fusion="cls"``).
        token_init: ``"zeros"`` (released) or ``"trunc_normal"`` (std 0.02) for cls/clip tokens (D2).
        use_pos_embed: add a learned position embedding (released: defined but not added, so off).
        text_encoder: builds ``text_embed`` once at construction: a tensor-file path,
            ``"open_clip:PATH"`` or an object with ``encode(prompts)``; None leaves the text head unbuilt
            (see :meth:`build_text_features`).
        template: prompt template, "a face image of {}".
        logit_scale: fixed similarity scale (100, CLIP's maximum).
        backbone_layers, backbone_stages: IR depth and stages kept (IR-50 cut after stage 3).
        pool_size, patch_sizes: AdaptiveAvgPool target and granularities (12; 2, 4, 6, 12 → 50 tokens).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps: transformer (256, 16, 4, 4.0, False,
            1e-5 = nn.LayerNorm's default as released).
        drop_path_rate: stochastic depth (released 0).

    Shapes at 112²: backbone (B, 256, 14, 14) → pooled (B, 256, 12, 12) → tokens (B, 50, 256) →
    ``forward_features`` (B, 52, 256) → logits (B, C).

    Text head: ``text_proj`` (Linear 512 → D) and the ``text_embed`` buffer exist only once text features exist
    (``text_encoder=``, :meth:`build_text_features`, or loading a state_dict that has them; a state_dict without
    them leaves the model's own text head as it is). ``forward_intermediates`` returns the block outputs (timm's
    ViT contract, one ``feature_info`` level per block); as NCHW maps it lays out the finest-granularity tokens
    (p = 2: a 6×6 grid), the coarser ones and cls/clip are in the NLC form.
    """

    def __init__(self, num_classes: int = 7, label_names: Optional[Sequence[str]] = None, text_token: str = "clip",
                 head_fusion: str = "cls", token_init: str = "zeros", use_pos_embed: bool = False,
                 text_encoder: Union[None, str, TextEncoder] = None, template: str = DEFAULT_TEMPLATE,
                 logit_scale: float = 100.0, backbone_layers: int = 50, backbone_stages: int = 3,
                 pool_size: int = 12, patch_sizes: Sequence[int] = (2, 4, 6, 12), embed_dim: int = 256,
                 depth: int = 16, num_heads: int = 4, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 norm_eps: float = 1e-5, drop_path_rate: float = 0.0, text_dim: int = TEXT_DIM,
                 in_chans: int = 3, img_size: Union[int, Sequence[int]] = 112, global_pool: str = "token"):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"in_chans: expected 3 (RGB), got {in_chans}")
        check_choice("text_token", text_token, TEXT_TOKENS)
        check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        check_choice("token_init", token_init, TOKEN_INITS)
        _check_pool(global_pool, head_fusion)
        bad = [p for p in patch_sizes if p < 1 or pool_size % p]
        if not patch_sizes or bad:
            raise ValueError(f"patch_sizes: expected divisors of pool_size={pool_size}, got {tuple(patch_sizes)}")
        if text_dim != TEXT_DIM:
            raise ValueError(f"text_dim: expected {TEXT_DIM} (CLIP ViT-B/32 text width), got {text_dim}")
        self.text_token = text_token
        self.head_fusion = head_fusion
        self.template = template
        self.logit_scale = float(logit_scale)
        self.pool_size = pool_size
        self.patch_sizes = tuple(patch_sizes)
        self.num_tokens = sum((pool_size // p) ** 2 for p in patch_sizes)
        self.num_features = self.embed_dim = self.head_hidden_size = embed_dim
        self.img_size = img_size
        self.global_pool = global_pool
        self.text_dim = text_dim

        self.backbone = IRSE(num_layers=backbone_layers, mode="ir", num_stages=backbone_stages)
        cnn_dim = self.backbone.out_channels
        self.patch_embed = nn.ModuleDict(OrderedDict(
            (f"p{p}", nn.Linear(p * p * cnn_dim, embed_dim)) for p in self.patch_sizes))
        self.token_norm = nn.BatchNorm1d(self.num_tokens)  # per token position (released ViT.norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.clip_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 2, embed_dim)) if use_pos_embed else None
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # host-side (meta-safe)
        self.blocks = nn.Sequential(*[
            PoolingBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rates[i],
                         norm_eps=norm_eps)
            for i in range(depth)])
        self.num_classes = num_classes
        self.label_names = default_label_names(num_classes, label_names)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # The text head is built with the text features (build_text_features / a state_dict holding it): a
        # parameter that model(x) never reaches would get no gradient from forward (timm's model contract).
        self.register_module("text_proj", None)  # nn.Linear(text_dim, embed_dim), the released fc2
        self.register_buffer("text_embed", None)  # (C, text_dim) fp32 frozen CLIP text features
        self.text_encoder_name: Optional[str] = None
        self.grad_checkpointing = False
        self._absent_text_keys: list[str] = []
        self.register_load_state_dict_post_hook(_keep_own_text_head)
        fine = min(self.patch_sizes)
        self.grid_size = (pool_size // fine, pool_size // fine)  # the NCHW layout of forward_intermediates
        self._grid_start = 2 + sum((pool_size // p) ** 2 for p in self.patch_sizes[:self.patch_sizes.index(fine)])
        size = img_size if isinstance(img_size, int) else img_size[0]
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=size / self.grid_size[0])
                             for i in range(depth)]
        self._init_weights(token_init)
        if text_encoder is not None:
            self.build_text_features(text_encoder)

    def _init_weights(self, token_init: str) -> None:
        """Released init: ViT Linear biases 0 (weights PyTorch default), LayerNorm 1/0, tokens zeros; the patch
        projections and text_proj keep PyTorch defaults (they sit outside the released ViT)."""
        for m in list(self.blocks.modules()) + [self.head]:
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if token_init == "trunc_normal":
            trunc_normal_(self.cls_token, std=0.02)
            trunc_normal_(self.clip_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    # --- text features (built once) ----------------------------------------------------------------------------
    @property
    def text_ready(self) -> bool:
        """Whether the text head has its features (``text_embed``) and can run."""
        return self.text_embed is not None and self.text_proj is not None

    def _param_ref(self) -> Tensor:
        return self.cls_token

    def _ensure_text_proj(self, out_features: Optional[int] = None, in_features: Optional[int] = None,
                          bias: bool = True) -> None:
        if self.text_proj is None:
            ref = self._param_ref()
            self.text_proj = nn.Linear(in_features or self.text_dim, out_features or self.embed_dim, bias=bias,
                                       device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def build_text_features(self, encoder: Union[str, TextEncoder], template: Optional[str] = None) -> Tensor:
        """Run ``encoder`` once on this model's prompts and store the [C, 512] result in ``text_embed``; builds
        ``text_proj`` (PyTorch's default init, as released) when the model has none yet.

        ``encoder``: tensor-file path, ``"open_clip:PATH"`` or an object with ``encode(prompts)``. Call again
        after changing classes or the template. Returns the stored features.
        """
        enc = make_text_encoder(encoder)
        if enc is None:
            raise ValueError(f"encoder: expected a text encoder, got None. {NO_TEXT_FEATURES}")
        if self.label_names is None:
            raise ValueError("label_names: the text head needs class names for its prompts; pass label_names= "
                             f"(num_classes={self.num_classes} has no canonical names)")
        if template is not None:
            self.template = template
        embed = encode_labels(enc, self.label_names, self.template)
        self._ensure_text_proj()
        self.text_embed = embed.to(device=self._param_ref().device, dtype=torch.float32)
        self.text_encoder_name = getattr(enc, "encoder", type(enc).__name__)
        return self.text_embed

    def adopt_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Build the text head a state_dict holds (``text_proj.*``, ``text_embed``), without loading values,
        so that the model's keys match it; ``load_state_dict`` does this itself. An older fastfer file marks
        "no text features" with an all-NaN ``text_embed``: that entry is removed from ``state_dict``."""
        key = prefix + "text_embed"
        embed = state_dict.get(key)
        if embed is not None and embed.device.type != "meta" and bool(torch.isnan(embed).all()):
            state_dict.pop(key)
            embed = None
        if embed is not None and (self.text_embed is None or self.text_embed.shape != embed.shape):
            self.text_embed = torch.empty(embed.shape, device=self._param_ref().device, dtype=torch.float32)
        weight = state_dict.get(prefix + "text_proj.weight")
        if weight is not None and self.text_proj is None:
            self._ensure_text_proj(weight.shape[0], weight.shape[1], bias=prefix + "text_proj.bias" in state_dict)
        if embed is not None:
            self._ensure_text_proj()  # text features without a projection: the head starts from PyTorch's init

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.adopt_state_dict(state_dict, prefix)
        own = {"text_embed": self.text_embed is not None, "text_proj.weight": self.text_proj is not None,
               "text_proj.bias": self.text_proj is not None and self.text_proj.bias is not None}
        self._absent_text_keys = [prefix + k for k in _TEXT_KEYS if own[k] and prefix + k not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- forward ------------------------------------------------------------------------------------------------
    def forward_tokens(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → normalised multi-granularity tokens (B, N, D), N = 50 by default."""
        f = F.adaptive_avg_pool2d(self.backbone(x), self.pool_size)
        tokens = torch.cat([self.patch_embed[f"p{p}"](patchify(f, p)) for p in self.patch_sizes], dim=1)
        return self.token_norm(tokens)

    def _embed(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → the blocks' input (B, 2 + N, D): cls, clip, then the N tokens (+ pos-embed)."""
        tokens = self.forward_tokens(x)
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.clip_token.expand(B, -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → transformer output (B, 2 + N, D): token 0 cls, token 1 clip, then the N tokens."""
        x = self._embed(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_intermediates(self, x: Tensor, indices: Union[None, int, Sequence[int]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Block outputs as timm's ViT returns them.

        Args:
            x: (B, 3, H, W) images.
            indices: blocks to return: None all, int n the last n, a sequence of indices (negative from the end).
            return_prefix_tokens: return (features, prefix (B, 2, D): cls and clip) pairs.
            norm: accepted for timm; FER-former has no final norm (as released), so it changes nothing.
            stop_early: run no block after the last one asked for (the final output is then that block's).
            output_fmt: ``NCHW`` the finest-granularity tokens as their (B, D, g, g) grid (p = 2: 6×6);
                ``NLC`` every multi-granularity token (B, N, D) (N = 50: 36 + 9 + 4 + 1).
            intermediates_only: return only the list.

        Returns:
            ``(final output (B, 2 + N, D), [intermediates])``, or the list alone.
        """
        fmt = check_output_fmt(output_fmt)
        taken, max_index = take_indices(len(self.blocks), indices)
        x = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = checkpoint(blk, x) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x)
            if i in taken:
                if fmt == "NCHW":
                    g = x[:, self._grid_start:self._grid_start + self.grid_size[0] * self.grid_size[1]]
                    feat = g.reshape(x.shape[0], *self.grid_size, -1).permute(0, 3, 1, 2).contiguous()
                else:
                    feat = x[:, 2:]
                intermediates.append((feat, x[:, :2]) if return_prefix_tokens else feat)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the heads); returns the kept absolute indices
        (timm's FeatureGetterNet calls this for ``features_only=True``). ``prune_norm``: no final norm to drop."""
        taken, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.head_fusion = "cls"
            self.reset_classifier(0, "")
            self.text_proj = None
        return taken

    def text_features(self) -> Tensor:
        """L2-normalised projected prompt features (C, D): ``normalize(text_proj(text_embed))``."""
        if self.text_embed is None or self.text_proj is None:
            raise RuntimeError(NO_TEXT_FEATURES)
        return F.normalize(self.text_proj(self.text_embed.to(self.text_proj.weight.dtype)), dim=-1)

    def forward_text_head(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Features (B, 2+N, D) → (text_logits (B, C), image_feature (B, D), text_feature (C, D))."""
        text = self.text_features()
        image = F.normalize(x[:, 1 if self.text_token == "clip" else 0], dim=-1)
        return self.logit_scale * image @ text.t(), image, text

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features (B, 2+N, D) → (B, C) per ``head_fusion``; ``pre_logits``: the label head's input (B, D).
        With ``global_pool=''`` every token stays: (B, 2+N, D) pre-logits, (B, 2+N, C) logits."""
        feat = x[:, 0] if self.global_pool == "token" else x
        if pre_logits:
            return feat
        if self.head_fusion == "cls":
            return self.head(feat)
        text_logits = self.forward_text_head(x)[0]
        if self.head_fusion == "text":
            return text_logits
        both = torch.stack([F.log_softmax(self.head(feat), -1), F.log_softmax(text_logits, -1)])
        return torch.logsumexp(both, dim=0) - math.log(2.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_outputs(self, x: Tensor) -> FerFormerOutput:
        """Both heads for training and evaluation: x (B, 3, H, W) → :class:`FerFormerOutput`."""
        feats = self.forward_features(x)
        text_logits, image, text = self.forward_text_head(feats)
        return FerFormerOutput(self.head(feats[:, 0]), text_logits, image, text)

    # --- timm contract ------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: backbone, token embedding and tokens, then blocks."""
        return dict(stem=r"^backbone|^patch_embed|^token_norm|^cls_token|^clip_token|^pos_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         label_names: Optional[Sequence[str]] = None) -> None:
        """New label head with ``num_classes`` outputs (0 → identity); ``global_pool`` ``"token"`` / ``""``
        (unpooled tokens) when given. The text features no longer match the classes: ``text_embed`` is dropped
        until :meth:`build_text_features` runs again (``text_proj`` stays)."""
        if global_pool is not None:
            _check_pool(global_pool, self.head_fusion)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.label_names = default_label_names(num_classes, label_names)
        ref = self._param_ref()
        self.head = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0
                     else nn.Identity())
        if num_classes > 0:
            nn.init.zeros_(self.head.bias)
        self.text_embed = None

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "clip_token", "pos_embed"}

    def count_parameters(self) -> dict[str, int]:
        """Parameters per part (dead weight of the release is not built; ``text_proj`` is 0 until the text head
        exists)."""
        parts = {"backbone": self.backbone, "patch_embed": self.patch_embed, "token_norm": self.token_norm,
                 "blocks": self.blocks, "head": self.head, "text_proj": self.text_proj}
        out = {k: 0 if m is None else sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        out["tokens"] = self.cls_token.numel() + self.clip_token.numel()
        out["pos_embed"] = 0 if self.pos_embed is None else self.pos_embed.numel()
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def extra_repr(self) -> str:
        return (f"text_token={self.text_token!r}, head_fusion={self.head_fusion!r}, num_tokens={self.num_tokens}, "
                f"text_ready={self.text_ready}")


def _check_pool(global_pool: str, head_fusion: str) -> None:
    check_choice("global_pool", global_pool, GLOBAL_POOLS)
    if global_pool == "" and head_fusion != "cls":
        raise ValueError(f"global_pool='': the unpooled mode keeps every token for the label head; expected "
                         f"head_fusion='cls', got {head_fusion!r}")


def _keep_own_text_head(module: "FerFormer", incompatible) -> None:
    """A state_dict without a text head leaves the model's own one as it is (not a missing key)."""
    for key in module._absent_text_keys:
        if key in incompatible.missing_keys:
            incompatible.missing_keys.remove(key)
    module._absent_text_keys = []


# --- loss ---------------------------------------------------------------------------------------------------------

class FerFormerLossOutput(NamedTuple):
    loss: Tensor  # weighted total
    cls_loss: Tensor
    text_loss: Tensor


class FerFormerLoss(nn.Module):
    """FER-former training loss: ``cls_weight · CE(logits, y) + text_weight · L_text`` (released: 1:1, D8).

    ``text_loss="ce"`` (released): CE over the similarity logits (100 · cos with every class prompt).
    ``text_loss="infonce"`` (the pre-release variant kept as an option): symmetric CLIP-style InfoNCE between
    the batch's image features and the text features of their labels, logits = logit_scale · img · text[y]ᵀ
    (B × B); samples sharing a label are all positives (targets spread uniformly over them), so a batch with
    repeated classes is not penalised for matching them.

    ``forward(out: FerFormerOutput, target (B,) int64, logit_scale=100.)`` → :class:`FerFormerLossOutput`.
    """

    def __init__(self, cls_weight: float = 1.0, text_weight: float = 1.0, text_loss: str = "ce",
                 label_smoothing: float = 0.0):
        super().__init__()
        check_choice("text_loss", text_loss, ("ce", "infonce"))
        self.cls_weight = float(cls_weight)
        self.text_weight = float(text_weight)
        self.text_loss = text_loss
        self.label_smoothing = float(label_smoothing)

    def forward(self, out: FerFormerOutput, target: Tensor, logit_scale: float = 100.0) -> FerFormerLossOutput:
        if target.dim() != 1 or target.shape[0] != out.logits.shape[0]:
            raise ValueError(f"target: expected shape ({out.logits.shape[0]},) class indices, "
                             f"got {tuple(target.shape)}")
        cls_loss = F.cross_entropy(out.logits, target, label_smoothing=self.label_smoothing)
        if self.text_loss == "ce":
            text_loss = F.cross_entropy(out.text_logits, target, label_smoothing=self.label_smoothing)
        else:
            text_loss = symmetric_infonce(out.image_feature, out.text_feature[target], target, logit_scale)
        return FerFormerLossOutput(self.cls_weight * cls_loss + self.text_weight * text_loss, cls_loss, text_loss)


def symmetric_infonce(image: Tensor, text: Tensor, target: Tensor, logit_scale: float = 100.0) -> Tensor:
    """CLIP's symmetric InfoNCE over a batch of L2-normalised pairs image (B, D) ↔ text (B, D).

    Pairs with equal ``target`` are all positives: the target distribution of row i is uniform over
    {j : target[j] == target[i]} (reduces to the identity when all labels differ).
    """
    logits = logit_scale * image @ text.t()
    same = (target[:, None] == target[None, :]).to(logits.dtype)
    soft = same / same.sum(dim=1, keepdim=True)
    loss_i = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(soft * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


# --- timm registration ---------------------------------------------------------------------------------------------

def _cfg(**overrides) -> dict:
    cfg = dict(
        url="", num_classes=7, label_names=EXPRESSIONS[:7], input_size=(3, 112, 112), pool_size=None,
        crop_pct=1.0, interpolation="bilinear", mean=RAFDB_MEAN, std=RAFDB_STD,
        first_conv="backbone.input_layer.0", classifier="head",
        paper_name="FER-former: Multi-modal Transformer for Facial Expression Recognition",
        paper_ids="arXiv:2303.12997", origin_url="https://github.com/ydl832/FER-former",
        notes=(("Official checkpoints: none released; convert a trained one with "
                "fastfer.models.convert.fer_former. IR-50 init: face.evoLVe backbone_ir50_ms1m_epoch63."),),
    )
    cfg.update(overrides)
    return cfg


default_cfgs = generate_default_cfgs({
    "fer_former": _cfg(),
    "fer_former_tiny": _cfg(input_size=(3, 56, 56),
                            notes=("Small random-init variant for tests and CPU demos (IR stages 1-2, 3 blocks).",)),
})


def _create(variant: str, pretrained: bool, **kwargs) -> FerFormer:
    from fastfer.models.convert.fer_former import checkpoint_filter_fn

    # features_only=True: timm's FeatureGetterNet over forward_intermediates, the last 3 blocks by default (as ViT)
    model = build_timm_model(FerFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                             feature_cfg=dict(out_indices=3), **kwargs)
    if isinstance(model, FerFormer):
        model.pretrained_cfg.update(num_classes=model.num_classes, label_names=model.label_names)
    return model


@register_model
def fer_former(pretrained: bool = False, **kwargs) -> FerFormer:
    """FER-former: IR-50 (stages 1–3) + 50 multi-granularity tokens + 16-block ViT (256-d, 4 heads) with a label
    head and a CLIP-text similarity head; 112², RAF-DB mean/std. Options: see :class:`FerFormer`."""
    return _create("fer_former", pretrained, **kwargs)


@register_model
def fer_former_tiny(pretrained: bool = False, **kwargs) -> FerFormer:
    """A small FER-former for tests and CPU demos: IR stages 1–2 at 56² (128×14×14), 64-d, 3 blocks, 2 heads
    (3 blocks: timm's feature contract asks for at least 3 intermediate levels)."""
    kwargs = dict(dict(backbone_stages=2, embed_dim=64, depth=3, num_heads=2, img_size=56), **kwargs)
    return _create("fer_former_tiny", pretrained, **kwargs)
