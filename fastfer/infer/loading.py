"""Model loading for inference and export: a model object or a checkpoint → (eval model, :class:`ModelInfo`).

A checkpoint is what fastfer training writes (see :mod:`fastfer.models.weights`): a safetensors state dict whose
header metadata names the model, its constructor arguments, ``label_names`` and preprocessing (``input_size``,
``mean``, ``std``, ``alignment``) and, once calibrated, ``calibration`` (``{"temperature": T, ...}``); a run or checkpoint folder stands for the weights inside it. A plain state dict
(safetensors or ``.pth``) without metadata needs ``model_name``; its class count is read from the classifier
weight. A checkpoint of another model or another class count fails with a message that says which.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model: name, class names in logit order, input (H, W), mean/std on
    the [0, 1] scale, the face alignment its training data had (None when unknown) and the calibrated softmax
    temperature (None when the checkpoint was not calibrated)."""

    model_name: Optional[str]
    label_names: tuple[str, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    alignment: Optional[str] = None
    temperature: Optional[float] = None


def _cfg_value(cfg, key):
    if cfg is None:
        return None
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def model_info(model: nn.Module, meta: Optional[dict] = None, model_name: Optional[str] = None) -> ModelInfo:
    """Preprocessing and labels of ``model``: checkpoint metadata first, then ``model.pretrained_cfg``."""
    meta = meta or {}
    pre = meta.get("preprocessing") or {}
    cfg = getattr(model, "pretrained_cfg", None)

    def pick(key):
        for source in (pre, meta):
            if isinstance(source, dict) and source.get(key) is not None:
                return source[key]
        return _cfg_value(cfg, key)

    size = pick("input_size") or getattr(model, "img_size", None)
    if size is None:
        raise ValueError("model: cannot tell its input size (no pretrained_cfg['input_size'], no checkpoint "
                         "metadata 'input_size'); give a fastfer/timm model or a fastfer checkpoint")
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)[-2:]
    mean, std = pick("mean"), pick("std")
    if mean is None or std is None:
        raise ValueError("model: no normalisation mean/std in its pretrained_cfg or the checkpoint metadata")
    num_classes = getattr(model, "num_classes", None)
    names = meta.get("label_names") or getattr(model, "label_names", None) or _cfg_value(cfg, "label_names")
    if names is None:
        names = [f"class_{i}" for i in range(num_classes or 0)]
    names = tuple(str(n) for n in names)
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"label_names: expected {num_classes} names (the model's num_classes), got "
                         f"{len(names)}: {list(names)}")
    name = model_name or meta.get("model") or _cfg_value(cfg, "architecture")
    return ModelInfo(name, names, size, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                     pre.get("alignment") or meta.get("alignment"), calibrated_temperature(meta))


def calibrated_temperature(meta: dict) -> Optional[float]:
    """``meta["calibration"]["temperature"]`` as a float, None when absent; ValueError naming the field when it is
    not a positive finite number."""
    calibration = meta.get("calibration")
    if calibration is None:
        return None
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    if value is None:
        raise ValueError(f"checkpoint metadata calibration: expected {{'temperature': T, ...}}, got {calibration!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"checkpoint metadata calibration.temperature: expected a positive finite number, got "
                         f"{value!r}")
    return float(value)


def load_model(source, model_name: Optional[str] = None, num_classes: Optional[int] = None,
               label_names: Optional[Sequence[str]] = None) -> tuple[nn.Module, ModelInfo]:
    """``source`` (an ``nn.Module``, or a checkpoint file / run folder) → (model in eval mode, :class:`ModelInfo`).

    Checkpoints are rebuilt by :func:`fastfer.models.weights.load_model` (the same loader training and
    evaluation use): ``model_name`` / ``num_classes`` build a model for a plain state dict and are checked
    against the checkpoint's metadata otherwise.
    """
    if isinstance(source, nn.Module):
        return source.eval(), model_info(source, model_name=model_name)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model: expected an nn.Module or a checkpoint path, got {type(source).__name__}")
    from fastfer.models import weights

    model, meta = weights.load_model(source, model_name=model_name, num_classes=num_classes, label_names=label_names)
    return model, model_info(model, meta, meta["model"])
