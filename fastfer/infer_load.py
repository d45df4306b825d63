"""Model loading for inference and export: a model object or a checkpoint → (eval model, :class:`ModelInfo`).

A checkpoint is what fastfer training writes (:mod:`fastfer.train.checkpoint`): a safetensors state dict whose
header metadata names the model, its constructor arguments, ``label_names`` and preprocessing (``input_size``,
``mean``, ``std``, ``alignment``); a run or checkpoint folder stands for the weights inside it. A plain state dict
(safetensors or ``.pth``) without metadata needs ``model_name``; its class count is read from the classifier
weight. A checkpoint of another model or another class count fails with a message that says which.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model: name, class names in logit order, input (H, W), mean/std on
    the [0, 1] scale, and the face alignment its training data had (None when unknown)."""

    model_name: Optional[str]
    label_names: tuple[str, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    alignment: Optional[str] = None


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
    name = model_name or meta.get("model_name") or _cfg_value(cfg, "architecture")
    return ModelInfo(name, names, size, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                     pre.get("alignment") or meta.get("alignment"))


def find_checkpoint(path) -> str:
    """A weights file: ``path`` itself, a run folder's ``model.safetensors`` (else its latest checkpoint), or a
    checkpoint folder's weights (:func:`fastfer.train.checkpoint.find_weights`)."""
    from fastfer.train.checkpoint import find_weights

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file or folder {path!r}")
    return os.fspath(find_weights(path))


def read_metadata(path: str) -> dict:
    """The fastfer metadata of a weights file (the ``fastfer`` JSON in a safetensors header written by training:
    ``model``, ``model_kwargs``, ``num_classes``, ``label_names``, ``preprocessing``); {} for other files."""
    if not path.endswith(".safetensors"):
        return {}
    from fastfer.train.checkpoint import read_metadata as read_fastfer_metadata

    meta = dict(read_fastfer_metadata(path))
    if isinstance(meta.get("model"), str):
        meta.setdefault("model_name", meta["model"])
    return meta


def _classifier_rows(state: dict, model_name: str) -> Optional[int]:
    """Classes of a state dict from the classifier weight the registered cfg names (``head`` → head.weight)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
        classifier = cfg.classifier if cfg is not None else "head"
    except Exception:  # unknown name: create_model reports it
        classifier = "head"
    for key in (f"{classifier}.weight", f"{classifier}.fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _check_state(model: nn.Module, state: dict, where: str) -> None:
    """Raise a ValueError that names shape mismatches (class count first) and missing / unexpected keys."""
    own = model.state_dict()
    shape_errors = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if not (shape_errors or missing or unexpected):
        return
    lines = [f"checkpoint {where!r} does not fit the model:"]
    for k, got, want in shape_errors[:8]:
        lines.append(f"  {k}: checkpoint {list(got)}, model {list(want)}")
    if missing:
        lines.append(f"  missing in the checkpoint ({len(missing)}): {', '.join(missing[:6])}"
                     + (" …" if len(missing) > 6 else ""))
    if unexpected:
        lines.append(f"  not in the model ({len(unexpected)}): {', '.join(unexpected[:6])}"
                     + (" …" if len(unexpected) > 6 else ""))
    lines.append("  (a checkpoint of another model or another class count? pass the right model_name / "
                 "num_classes, or the checkpoint's own metadata)")
    raise ValueError("\n".join(lines))


def load_model(source, model_name: Optional[str] = None, num_classes: Optional[int] = None,
               backend: Optional[str] = None, label_names: Optional[Sequence[str]] = None):
    """``source`` (an ``nn.Module``, or a checkpoint file / run folder) → (model in eval mode, :class:`ModelInfo`).

    ``model_name`` / ``num_classes`` build a model for a plain state dict and are checked against the checkpoint's
    metadata otherwise. ``backend`` sets the op backend of the fused ops.
    """
    if isinstance(source, nn.Module):
        model = source
        _set_backend(model, backend)
        return model.eval(), model_info(model, model_name=model_name)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model: expected an nn.Module or a checkpoint path, got {type(source).__name__}")
    import fastfer.models  # noqa: F401 — registers the models with timm
    from fastfer.models._common import read_state_dict

    path = find_checkpoint(source)
    meta = read_metadata(path)
    saved_name = meta.get("model_name")
    if model_name and saved_name and model_name != saved_name:
        raise ValueError(f"checkpoint {path!r} holds a {saved_name!r} model, not {model_name!r} (--model / "
                         f"model_name); drop the option or pick the matching checkpoint")
    name = saved_name or model_name
    if not name:
        raise ValueError(f"checkpoint {path!r} has no metadata naming its model; pass model_name (--model)")
    state = read_state_dict(path)
    kwargs = dict(meta.get("model_kwargs") or {})
    saved_classes = kwargs.get("num_classes") or meta.get("num_classes") or _classifier_rows(state, name)
    if num_classes is not None and saved_classes is not None and int(saved_classes) != num_classes:
        raise ValueError(f"checkpoint {path!r} has {saved_classes} classes, not num_classes={num_classes}")
    if saved_classes is not None or num_classes is not None:
        kwargs["num_classes"] = int(saved_classes if saved_classes is not None else num_classes)
    names = label_names or meta.get("label_names")
    if names is not None:
        kwargs["label_names"] = tuple(names)
    kwargs.pop("backend", None)
    kwargs.pop("pretrained", None)
    model = fastfer.models.create_model(name, backend=backend, **kwargs)
    _check_state(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval(), model_info(model, meta, name)


def _set_backend(model: nn.Module, backend: Optional[str]) -> None:
    if backend is None:
        return
    if hasattr(model, "set_backend"):
        model.set_backend(backend)
        return
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend
