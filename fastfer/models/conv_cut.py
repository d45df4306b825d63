"""Conv-cut: a truncated ConvNeXt-B trunk, a Detail Extraction Block and a small attention head (docs/models/convcut.md).

Pipeline at 224² (NCHW)::

    x (B, 3, 224, 224) ImageNet mean/std
    → base_model: ConvNeXt-B stem, stages 0–1, stage 2 downsample + blocks 0–22, block 23 conv_dw + norm only
                                                                          (B, 512, 14, 14)
    → patch_extraction (DET): separable conv 4×4 s4 'same' → ReLU, separable conv 2×2 s2 → ReLU (B, 256, 2, 2)
    → head: per-sample attention over the 4 DET tokens (default) or the released batch-axis attention
    → classification_head                                                                      (B, C) logits

Module names follow the released Keras model (``base_model``, ``patch_extraction``, ``pre_classification``,
``attention``, ``classification_head``) so a Keras weight file converts mechanically; the trunk keeps timm's
ConvNeXt names below ``base_model`` so timm ConvNeXt-B weights load by name
(:func:`fastfer.models.convert.conv_cut.convnext_to_convcut`).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.fx
from timm.layers import LayerNorm, LayerNorm2d, create_conv2d
from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXtStage
from torch import Tensor, nn

from fastfer.labels import EXPRESSIONS
from fastfer.models._common import (
    build_timm_model,
    check_choice,
    check_output_fmt,
    default_label_names,
    take_indices,
    tracing,
)
from fastfer.ops import token_pool_attention

torch.fx.wrap("token_pool_attention")  # FX: one call node

TRUNK_MODES = ("frozen", "last_n", "all")
ATTENTION_MODES = ("tokens", "keras_batch")
CUT_POINTS = ("block23_norm", "block22")
MODE_POOLS = {"tokens": "attn", "keras_batch": "avg"}  # the head's pooling per attention mode
DET_LEVEL = 4  # feature level of the DET output: trunk stages 0-2, DET conv1 (3), DET conv2 (4)
CONVNEXT_BASE_DEPTHS = (3, 3, 27, 3)  # the full ConvNeXt-B, for timm's drop-path schedule


class PartialConvNeXtBlock(nn.Module):
    """A ConvNeXt block cut after its LayerNorm (the released cut at block 23): 7×7 depthwise conv → LN.

    No MLP, layer scale or residual. x (B, C, H, W) → (B, C, H, W). Names ``conv_dw``, ``norm`` as in timm.
    """

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.conv_dw = create_conv2d(dim, dim, kernel_size=kernel_size, depthwise=True, bias=True)
        self.norm = LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv_dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtTrunk(nn.Module):
    """The first three ConvNeXt stages built from timm modules, the last stage cut after ``depths[2]`` blocks.

    Args:
        dims: widths of stages 0–2 (ConvNeXt-B: 128, 256, 512).
        depths: blocks built in stages 0–2 (Conv-cut: 3, 3, 24 — block 23 is partial, see ``cut``).
        cut: ``"block23_norm"`` (released): the last built block keeps only conv_dw + norm;
            ``"block22"``: cut at the block boundary, every built block is whole.
        drop_path_rate: stochastic depth over the full network's ``full_depths`` (timm's linear rule).

    ``forward(x)``: (B, 3, H, W) → (B, dims[2], H/16, W/16); 224² → (B, 512, 14, 14).
    Keys: ``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``, ``stages.{i}.blocks.{j}.*`` as in timm's ConvNeXt.
    """

    def __init__(self, dims: Sequence[int] = (128, 256, 512), depths: Sequence[int] = (3, 3, 24),
                 cut: str = "block23_norm", drop_path_rate: float = 0.0,
                 full_depths: Sequence[int] = CONVNEXT_BASE_DEPTHS):
        super().__init__()
        check_choice("cut", cut, CUT_POINTS)
        if len(dims) != 3 or len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"dims, depths: expected 3 stages each with ≥ 1 block, got dims={tuple(dims)}, "
                             f"depths={tuple(depths)}")
        self.cut = cut
        self.out_channels = dims[2]
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        # host-side (device="cpu"): the rates become Python floats, also when the model is built on meta
        rates = torch.linspace(0, drop_path_rate, sum(full_depths), device="cpu").split(list(full_depths))
        stages, prev = [], dims[0]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stages.append(ConvNeXtStage(
                prev, dim, stride=1 if i == 0 else 2, depth=depth, drop_path_rates=rates[i][:depth].tolist(),
                ls_init_value=1e-6, norm_layer=LayerNorm2d, norm_layer_cl=LayerNorm))
            prev = dim
        if cut == "block23_norm":
            stages[2].blocks[-1] = PartialConvNeXtBlock(dims[2])
        self.stages = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def blocks(self) -> list[nn.Module]:
        """Every block in forward order (the partial block last)."""
        return [b for stage in self.stages for b in stage.blocks]


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D: depthwise k×k (no bias) → pointwise 1×1 (bias) → ReLU.

    ``padding="same"`` is TensorFlow's (asymmetric when needed; symmetric 1 for k=s=4 on 14×14).
    x (B, C_in, H, W) → (B, C_out, H', W').
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: str):
        super().__init__()
        self.depthwise = create_conv2d(in_chs, in_chs, kernel_size, stride=stride, padding=padding,
                                       depthwise=True, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.pointwise(self.depthwise(x)))


class TokenAttentionPool(nn.Module):
    """Per-sample scaled dot-product self-attention over the DET tokens, mean-pooled (docs/models/convcut.md §4.2).

    Single head, Q/K/V = Linear(dim, dim) each with bias (stored stacked as ``qkv``: rows Wq, Wk, Wv),
    scale 1/sqrt(dim), no output projection, no residual; runs on the fused ``token_pool_attention`` op
    (head dim = dim ≤ 256). tokens (B, N, dim) → (B, dim). Each sample attends only over its own tokens.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim)

    def reset_parameters(self) -> None:
        # Keras Glorot-uniform per projection (each dim × dim), zero bias.
        for w in self.qkv.weight.data.chunk(3, dim=0):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.qkv.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        B, N, D = tokens.shape
        qkv = self.qkv(tokens).reshape(B, N, 3, 1, D)  # packed (B, N, 3, H=1, D) layout of the fused op
        out = token_pool_attention(qkv, None).out  # (B, N, D), scale D**-0.5
        return out.mean(dim=1)


class KerasBatchAttention(nn.Module):
    """The released head's ``Attention(use_scale=True)([h, h])`` on a (B, D) input: **batch-axis** attention.

    out = softmax(scale · h hᵀ, dim=-1) h with a B×B score matrix and one learned scalar ``scale`` (init 1).
    Every sample attends over the other samples of its mini-batch, so a prediction depends on the batch it is
    in (identity at B = 1). Opt-in only, for reproducing the released numbers; warns when used at inference.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, h: Tensor) -> Tensor:
        if not self.training and not torch.compiler.is_compiling():
            warnings.warn("conv_cut attention='keras_batch': predictions depend on the other images in the batch "
                          "(batch-axis attention, as released); record the evaluation batch size and order",
                          RuntimeWarning, stacklevel=3)
        attn = torch.softmax(self.scale * (h @ h.transpose(0, 1)), dim=-1)
        return attn @ h


class ConvCut(nn.Module):
    """Conv-cut FER model (docs/models/convcut.md), returns logits.

    Args:
        num_classes: classifier outputs (7 RAF-DB, 8 FERPlus); label names default to the canonical order.
        label_names: names of the classifier rows (default: canonical ``neutral, happy, …``).
        attention: ``"tokens"`` (default, project decision §4.2): per-sample softmax(QKᵀ/√d)V over the 4 DET
            tokens with Q/K/V projections, mean over tokens, before Dense(32). ``"keras_batch"``: the released
            head (GAP → Dense(32) → BN → attention **across the samples of the batch**). WARNING: in
            ``keras_batch`` mode an image's prediction changes with the batch size and with which images share
            its batch; it is the identity at batch 1. Use it only to reproduce the released code, and record
            the evaluation batch size (Keras default 32) and loader order.
        trunk: ``"all"`` (default: every trunk weight trains, as for any timm model), ``"frozen"`` (the
            released recipe: 0 trainable trunk weights, trunk kept in eval mode; the ``conv_cut`` training recipe
            passes it), ``"last_n"`` (train the last ``trunk_trainable_blocks`` blocks before the cut; the partial
            block counts as one; not faithful). Freezing is a training decision, not part of the architecture.
        trunk_trainable_blocks: n for ``trunk="last_n"``.
        freeze_trunk_norms: with ``last_n``/``all``, keep the trunk's LayerNorms frozen (the Keras loop's intent).
        cut: ``"block23_norm"`` (released: block 23's conv_dw + norm only) or ``"block22"`` (block boundary).
        dims, depths: trunk widths and built blocks of stages 0–2 (ConvNeXt-B cut: (128, 256, 512), (3, 3, 24)).
        det_dim: DET width (256). hidden_dim: Dense width before the classifier (32).
        drop_rate: SpatialDropout2D / Dropout p (0.1 stage 1, 0.2 stage 2 of the released recipe).
        det_norm: the stage-1-only LayerNorm(det_dim, eps 1e-6) after the DET (off: the evaluated model).
        drop_path_rate: trunk stochastic depth (only matters when the trunk trains).
        trunk_weights: local timm ConvNeXt-B state_dict file (``convnext_base.fb_in22k_ft_in1k``) loaded into
            the trunk by name (see :mod:`fastfer.models.convert.conv_cut`); None keeps the random init.
        global_pool: None (the mode's pooling: ``"attn"`` for ``tokens``, ``"avg"`` for ``keras_batch``) or ``""``
            (timm's unpooled mode, only with ``num_classes=0``: ``forward`` returns the DET map).

    Shapes at 224²: trunk (B, 512, 14, 14) → DET (B, 256, 2, 2) = ``forward_features`` →
    pooled (B, 256) → pre-logits (B, 32) = ``head_hidden_size`` → logits (B, C). ``num_features`` = 256 (DET
    channels). ``forward_intermediates`` / ``feature_info``: trunk stages 0–2 (reduction 4, 8, 16), DET conv1
    (64) and DET conv2 (128, the ``forward_features`` map).
    """

    def __init__(self, num_classes: int = 7, label_names: Optional[Sequence[str]] = None, attention: str = "tokens",
                 trunk: str = "all", trunk_trainable_blocks: int = 1, freeze_trunk_norms: bool = False,
                 cut: str = "block23_norm", dims: Sequence[int] = (128, 256, 512), depths: Sequence[int] = (3, 3, 24),
                 det_dim: int = 256, hidden_dim: int = 32, drop_rate: float = 0.1, det_norm: bool = False,
                 drop_path_rate: float = 0.0, in_chans: int = 3, trunk_weights: Optional[str] = None,
                 global_pool: Optional[str] = None, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"ConvCut: unexpected arguments {sorted(kwargs)}")
        if in_chans != 3:
            raise ValueError(f"in_chans: expected 3 (RGB), got {in_chans}")
        check_choice("attention", attention, ATTENTION_MODES)
        check_choice("trunk", trunk, TRUNK_MODES)
        if det_dim > 256 and attention == "tokens":
            raise ValueError(f"det_dim: expected ≤ 256 (the fused op's head-dim limit), got {det_dim}")
        self.attention_mode = attention
        self.trunk_mode = trunk
        self.global_pool = self._check_pool(global_pool, num_classes)
        self.num_features = det_dim
        self.head_hidden_size = hidden_dim
        self.drop_rate = drop_rate
        self.feature_info = [dict(module=f"base_model.stages.{i}", num_chs=dims[i], reduction=4 * 2**i)
                             for i in range(3)]
        self.feature_info += [dict(module="patch_extraction.conv1", num_chs=det_dim, reduction=64),
                              dict(module="patch_extraction.conv2", num_chs=det_dim, reduction=128)]

        self.base_model = ConvNeXtTrunk(dims, depths, cut=cut, drop_path_rate=drop_path_rate)
        self.patch_extraction = nn.Sequential(OrderedDict(
            conv1=SeparableConv2d(dims[2], det_dim, 4, 4, "same"),
            conv2=SeparableConv2d(det_dim, det_dim, 2, 2, "valid"),
        ))
        self.layernorm = LayerNorm(det_dim, eps=1e-6) if det_norm else None
        self.spatial_dropout = nn.Dropout2d(drop_rate)
        self.pool_dropout = nn.Dropout(drop_rate)
        self.pre_classification = nn.Sequential(OrderedDict(
            dense=nn.Linear(det_dim, hidden_dim),
            relu=nn.ReLU(),
            # Keras BatchNormalization defaults: eps 1e-3, momentum 0.99 (= PyTorch momentum 0.01)
            batch_normalization=nn.BatchNorm1d(hidden_dim, eps=1e-3, momentum=0.01),
        ))
        self.attention = TokenAttentionPool(det_dim) if attention == "tokens" else KerasBatchAttention()
        self.head_dropout = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.label_names = default_label_names(num_classes, label_names)
        self.classification_head = nn.Linear(hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_head()
        if trunk_weights is not None:
            from fastfer.models.convert.conv_cut import load_convnext_trunk
            from fastfer.models.weights import read_state_dict

            load_convnext_trunk(self, read_state_dict(trunk_weights))
        self.set_trunk_training(trunk, trunk_trainable_blocks, freeze_trunk_norms)

    # --- init and trunk freezing ------------------------------------------------------------------------------
    def _init_head(self) -> None:
        """Keras defaults outside the trunk: Glorot-uniform kernels, zero biases."""
        for m in (self.patch_extraction, self.pre_classification, self.classification_head):
            for mod in m.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(mod.weight)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)
        if isinstance(self.attention, TokenAttentionPool):
            self.attention.reset_parameters()

    def set_trunk_training(self, trunk: str, trainable_blocks: int = 1, freeze_norms: bool = False) -> None:
        """Choose what of the trunk trains (see the class docstring); frozen parts get ``requires_grad=False``."""
        check_choice("trunk", trunk, TRUNK_MODES)
        blocks = self.base_model.blocks()
        if trunk == "last_n" and not 1 <= trainable_blocks <= len(blocks):
            raise ValueError(f"trunk_trainable_blocks: expected 1..{len(blocks)} for trunk='last_n', "
                             f"got {trainable_blocks}")
        self.trunk_mode = trunk
        self.base_model.requires_grad_(trunk == "all")
        if trunk == "last_n":
            for block in blocks[-trainable_blocks:]:
                block.requires_grad_(True)
        if freeze_norms:
            for m in self.base_model.modules():
                if isinstance(m, (nn.LayerNorm, LayerNorm2d)):
                    m.requires_grad_(False)
        self.base_model.train(self.training and trunk != "frozen")

    def train(self, mode: bool = True) -> "ConvCut":
        super().train(mode)
        if self.trunk_mode == "frozen":
            self.base_model.eval()  # released: the frozen trunk runs in inference mode
        return self

    # --- forward ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_input(x: Tensor) -> None:
        if not tracing(x) and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"x: expected a (B, 3, H, W) image batch, got shape {tuple(x.shape)}")

    def forward_trunk(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → truncated ConvNeXt map (B, 512, H/16, W/16). A frozen trunk has no trainable
        weights, so autograd records nothing here unless x itself requires grad (e.g. input saliency)."""
        self._check_input(x)
        return self.base_model(x)

    def _det_norm(self, z: Tensor) -> Tensor:
        """The stage-1-only LayerNorm over the DET channels (identity when ``det_norm`` is off)."""
        if self.layernorm is None:
            return z
        return self.layernorm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) → DET output (B, det_dim, 2, 2) at 224²."""
        return self._det_norm(self.patch_extraction(self.forward_trunk(x)))

    def forward_intermediates(self, x: Tensor, indices: Union[None, int, Sequence[int]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Feature maps of every level as timm's ConvNeXt returns them.

        Args:
            x: (B, 3, H, W) images.
            indices: levels to return (see ``feature_info``: trunk stages 0–2, DET conv1, DET conv2): None all,
                int n the last n, a sequence of indices (negative from the end).
            norm: apply the DET LayerNorm (``det_norm``) to the DET output level.
            stop_early: run nothing after the last level asked for (the final output is then that level's).
            output_fmt: ``NCHW`` only (the levels are maps).
            intermediates_only: return only the list.

        Returns:
            ``(forward_features output, [maps (B, C_i, H_i, W_i)])``, or the list alone.
        """
        if check_output_fmt(output_fmt) != "NCHW":
            raise ValueError(f"output_fmt: Conv-cut's features are maps; expected 'NCHW', got {output_fmt!r}")
        taken, max_index = take_indices(len(self.feature_info), indices)
        self._check_input(x)
        levels = list(self.base_model.stages) + list(self.patch_extraction)
        if stop_early:
            levels = levels[:max_index + 1]
        x = self.base_model.stem(x)
        intermediates = []
        for i, level in enumerate(levels):
            x = level(x)
            if i in taken:
                intermediates.append(self._det_norm(x) if norm and i == DET_LEVEL else x)
        if intermediates_only:
            return intermediates
        return (self._det_norm(x) if len(levels) == DET_LEVEL + 1 else x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the levels after the last of ``indices`` (and the DET norm / the head); returns the kept absolute
        indices (timm's FeatureGetterNet calls this for ``features_only=True``)."""
        taken, max_index = take_indices(len(self.feature_info), indices)
        n_trunk = len(self.base_model.stages)
        if max_index < n_trunk:
            self.base_model.stages = self.base_model.stages[:max_index + 1]
        self.patch_extraction = self.patch_extraction[:max(max_index + 1 - n_trunk, 0)]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm or max_index < DET_LEVEL:
            self.layernorm = None
        if prune_head:
            self.reset_classifier(0, "")
        return taken

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """DET map (B, det_dim, h, w) → logits (B, C), or the (B, hidden_dim) classifier input if ``pre_logits``;
        with ``global_pool=''`` the map itself."""
        if self.global_pool == "":
            return x
        x = self.spatial_dropout(x)
        if self.attention_mode == "tokens":
            h = self.attention(x.flatten(2).transpose(1, 2))  # tokens in raster order → (B, det_dim)
            h = self.pre_classification(self.pool_dropout(h))
        else:
            h = self.pre_classification(self.pool_dropout(x.mean(dim=(2, 3))))
            h = self.attention(h)
        h = self.head_dropout(h)
        return h if pre_logits else self.classification_head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # --- timm contract ------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.classification_head

    def _check_pool(self, global_pool: Optional[str], num_classes: int) -> str:
        own = MODE_POOLS[self.attention_mode]
        pool = own if global_pool is None else global_pool
        check_choice("global_pool", pool, (own, ""))
        if pool == "" and num_classes > 0:
            raise ValueError(f"global_pool='': the unpooled DET map has no classifier; expected num_classes=0, "
                             f"got {num_classes}")
        return pool

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay (trunk stem, trunk stages / blocks, then the head)."""
        head = (r"^patch_extraction|^layernorm|^attention|^pre_classification|^classification_head", (99999,))
        return dict(stem=r"^base_model\.stem",
                    blocks=r"^base_model\.stages\.(\d+)" if coarse else [
                        (r"^base_model\.stages\.(\d+)\.downsample", (0,)),
                        (r"^base_model\.stages\.(\d+)\.blocks\.(\d+)", None), head])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the trunk blocks' activations in backward instead of storing them."""
        for stage in self.base_model.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         label_names: Optional[Sequence[str]] = None) -> None:
        """New Glorot-initialised classifier with ``num_classes`` outputs (0 → identity, pre-logits out).
        ``global_pool``: None keeps the current pooling, the mode's own (``attn`` / ``avg``) or ``''`` (the
        unpooled DET map, with ``num_classes=0``)."""
        self.global_pool = self._check_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.label_names = default_label_names(num_classes, label_names)
        device = self.pre_classification.dense.weight.device
        if num_classes > 0:
            self.classification_head = nn.Linear(self.head_hidden_size, num_classes, device=device)
            nn.init.xavier_uniform_(self.classification_head.weight)
            nn.init.zeros_(self.classification_head.bias)
        else:
            self.classification_head = nn.Identity()

    def count_parameters(self) -> dict[str, int]:
        """Parameters of each part and the trainable total."""
        parts = {"trunk": self.base_model, "det": self.patch_extraction, "attention": self.attention,
                 "pre_classification": self.pre_classification, "classifier": self.classification_head}
        out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        out["total"] = sum(p.numel() for p in self.parameters())
        out["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"attention={self.attention_mode!r}, trunk={self.trunk_mode!r}, num_classes={self.num_classes}"


# --- timm registration ---------------------------------------------------------------------------------------------

def _cfg(**overrides) -> dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = dict(
        url="", num_classes=7, label_names=EXPRESSIONS[:7], input_size=(3, 224, 224), pool_size=(2, 2),
        crop_pct=1.0, interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="base_model.stem.0", classifier="classification_head",
        paper_name="A Visual Self-attention Mechanism Facial Expression Recognition Network beyond Convnext",
        paper_ids="arXiv:2504.09077",
        notes=(("Trunk: timm convnext_base.fb_in22k_ft_in1k weights (local file) via "
                "fastfer.models.convert.conv_cut; no released Conv-cut checkpoint."),),
    )
    cfg.update(overrides)
    return cfg


default_cfgs = generate_default_cfgs({
    "conv_cut": _cfg(),
    "conv_cut_tiny": _cfg(notes=("Small random-init variant for tests and CPU demos (narrow ConvNeXt).",)),
})


def _create(variant: str, pretrained: bool, **kwargs) -> ConvCut:
    # features_only=True: timm's FeatureGetterNet over forward_intermediates, all five levels by default
    model = build_timm_model(ConvCut, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)), **kwargs)
    if isinstance(model, ConvCut):
        model.pretrained_cfg.update(num_classes=model.num_classes, label_names=model.label_names)
    return model


@register_model
def conv_cut(pretrained: bool = False, **kwargs) -> ConvCut:
    """Conv-cut: truncated ConvNeXt-B (51.6 M) + DET + per-sample token attention head; 224², ImageNet mean/std.
    See :class:`ConvCut` for the options (``attention``, ``trunk`` — the released recipe freezes it, ``cut``)."""
    return _create("conv_cut", pretrained, **kwargs)


@register_model
def conv_cut_tiny(pretrained: bool = False, **kwargs) -> ConvCut:
    """A narrow Conv-cut (ConvNeXt widths 16/32/64, 1/1/2 blocks, DET width 32) for tests and CPU demos."""
    kwargs = dict(dict(dims=(16, 32, 64), depths=(1, 1, 2), det_dim=32), **kwargs)
    return _create("conv_cut_tiny", pretrained, **kwargs)
