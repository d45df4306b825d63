"""timm registration of fastfer's models: ``timm.create_model("apvit" | "apvit_tiny", ...)`` after
``import fastfer.models``, and :func:`create_model`, the same factory.

Nothing is ever downloaded: the pretrained configs carry no URL or hub id. Pretrained weights come from a
local file, a converted fastfer safetensors or an official APViT ``.pth`` (converted on load)::

    timm.create_model("apvit", pretrained=True, pretrained_cfg_overlay=dict(file="apvit_rafdb.safetensors"))
    fastfer.models.create_model("apvit", weights="apvit_rafdb.safetensors")   # the same
"""
from __future__ import annotations

import os
from typing import Optional

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from fastfer.labels import EXPRESSIONS
from fastfer.models._common import build_timm_model
from fastfer.models.apvit import APVIT_CONFIG, APVIT_TINY_CONFIG, APViT
from fastfer.models.convert.apvit import checkpoint_filter_fn

MODEL_NAMES = ("apvit", "apvit_tiny")


def _cfg(**kwargs) -> dict:
    return dict(
        num_classes=7,
        label_names=EXPRESSIONS[:7],
        input_size=(3, 112, 112),
        fixed_input_size=True,
        pool_size=None,
        crop_pct=1.0,
        interpolation="bilinear",
        # ImageNet statistics on the 0–1 scale = APViT's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on 0–255
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="extractor.input_layer.0",
        classifier="head",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "apvit.rafdb": _cfg(
        license="apache-2.0",
        origin_url="https://github.com/youqingxiaozhua/APViT",
        paper_ids="arXiv:2212.05463",
        paper_name="Vision Transformer with Attentive Pooling for Robust Facial Expression Recognition",
        description="APViT as released for RAF-DB (MTCNN-aligned faces); convert the official checkpoint with "
                    "`fastfer convert --from apvit-mmcls` and pass it as pretrained_cfg_overlay=dict(file=...)",
        notes=("logits in canonical label order (converted from APViT's FER_CLASSES order)",),
    ),
    "apvit_tiny.untrained": _cfg(
        license="apache-2.0",
        description="small APViT (0.7 M parameters) for CPU training and tests; same APP/ATP mechanics",
    ),
})


def _create_apvit(variant: str, config: dict, pretrained: bool = False, **kwargs) -> APViT:
    model_args = {**config, **kwargs}
    # features_only=True: timm's FeatureGetterNet over forward_intermediates, the last 3 blocks by default (as ViT)
    return build_timm_model(APViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                            feature_cfg=dict(out_indices=3), **model_args)


@register_model
def apvit(pretrained: bool = False, **kwargs) -> APViT:
    """APViT paper configuration: IR-50 (3 stages) + APP (K=160 of 196) + 8×768 ViT with ATP, 65.2 M params."""
    return _create_apvit("apvit", APVIT_CONFIG, pretrained, **kwargs)


@register_model
def apvit_tiny(pretrained: bool = False, **kwargs) -> APViT:
    """Small APViT for CPU training: strided narrow IR trunk, APP 96 of 196, 4×128 ViT with ATP in 2 blocks."""
    return _create_apvit("apvit_tiny", APVIT_TINY_CONFIG, pretrained, **kwargs)


def create_model(name: str, pretrained: bool = False, weights: Optional[str | os.PathLike] = None, **kwargs):
    """``timm.create_model`` for fastfer's models; ``weights=path`` loads a local file (implies pretrained).

    Any other keyword (``num_classes``, ``patch_keep`` …) goes to the model.
    """
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights: no such file {os.fspath(weights)!r}")
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.update(file=os.fspath(weights), custom_load=False)
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, **kwargs)
