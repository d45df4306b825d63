"""Weights for :class:`~fastfer.models.conv_cut.ConvCut`.

- :func:`convnext_to_convcut`: a timm ConvNeXt-B state_dict (``convnext_base.fb_in22k_ft_in1k``, the PyTorch
  twin of Keras' "imagenet" ConvNeXtBase; local file) → the truncated trunk ``base_model.*``, by name. (An
  original FB-layout file is remapped by timm when loaded into ``timm.create_model("convnext_base")``.)
- :func:`keras_head_to_convcut`: the trainable part of a released Keras model (``patch_extraction``,
  ``pre_classification``, ``attention``, ``classification_head``, stage-1 ``layernorm``; convcut.md §9), given
  as a mapping of Keras weight names to arrays (read an ``.h5`` with :func:`read_keras_h5`, needs h5py). The
  Keras trunk is frozen ImageNet ConvNeXt-B, i.e. the timm weights above, so a released model converts as
  ``convnext_to_convcut(timm file) + keras_head_to_convcut(h5)``. A Keras-mode head converts only to
  ``attention="keras_batch"``. Mapping the Keras *trunk* names is left out (its weights equal timm's).

``fastfer convert --from convnext-b CONVNEXT_FILE DST.safetensors`` writes a trunk-only Conv-cut state_dict.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from fastfer.labels import NATIVE_ORDERS, permute_classifier_rows
from fastfer.models.weights import unwrap_state_dict

_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


def convnext_to_convcut(state_dict: dict, depths: Sequence[int] = (3, 3, 24), cut: str = "block23_norm",
                        dropped: Optional[list] = None) -> dict:
    """timm ConvNeXt state_dict → ``base_model.*`` of a Conv-cut trunk with ``depths`` built blocks.

    Kept: stem, stages 0–1, stage 2 downsample and blocks < depths[2]; with ``cut="block23_norm"`` the last
    built block keeps only ``conv_dw`` and ``norm``. Everything else (remaining blocks, layer scale and MLP of
    the cut block, stage 3, head) is dropped and named in ``dropped``. Missing trunk tensors are an error.
    """
    sd = unwrap_state_dict(state_dict)
    if "downsample_layers.0.0.weight" in sd:
        raise ValueError("state_dict: this is the original FB ConvNeXt layout; load it through timm first "
                         "(timm.create_model('convnext_base', pretrained=True, pretrained_cfg_overlay="
                         "dict(file=PATH)).state_dict() remaps it)")
    if "stem.0.weight" not in sd:
        raise ValueError("state_dict: no 'stem.0.weight'; expected a timm ConvNeXt state_dict")
    out = {}
    last = depths[2] - 1
    for key, value in sd.items():
        keep = key.startswith(("stem.", "stages.0.", "stages.1.", "stages.2.downsample."))
        m = _BLOCK.match(key)
        if m and int(m.group(1)) == 2:
            block, rest = int(m.group(2)), m.group(3)
            keep = block < last or (block == last and (cut == "block22" or rest.startswith(("conv_dw.", "norm."))))
        if keep:
            out[f"base_model.{key}"] = value
        elif dropped is not None:
            dropped.append(key)
    return out


def load_convnext_trunk(model, state_dict: dict) -> list[str]:
    """Load timm ConvNeXt weights into ``model.base_model`` (every trunk tensor required); returns dropped names."""
    dropped: list[str] = []
    trunk = convnext_to_convcut(state_dict, _built_depths(model), model.base_model.cut, dropped)
    expected = {f"base_model.{k}" for k in model.base_model.state_dict()}
    missing, extra = sorted(expected - trunk.keys()), sorted(trunk.keys() - expected)
    if missing or extra:
        raise ValueError(f"state_dict does not fit the trunk: missing {missing[:5]}, unexpected {extra[:5]}")
    model.load_state_dict(trunk, strict=False)
    return dropped


def _built_depths(model) -> tuple[int, ...]:
    return tuple(len(stage.blocks) for stage in model.base_model.stages)


# --- Keras head ---------------------------------------------------------------------------------------------------

def _keras_key(name: str) -> str:
    """Strip the model/group prefix and the ``:0`` suffix of a Keras weight name:
    'model/patch_extraction/patch_extraction/separable_conv2d/depthwise_kernel:0'
    → 'patch_extraction/separable_conv2d/depthwise_kernel' (the right-most head-layer name starts the key)."""
    name = re.sub(r":\d+$", "", name)
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=/))(" + "|".join(_HEAD_ROOTS) + r")/", name)]
    if starts:
        name = name[starts[-1]:]
    # Keras numbers repeated layer names (dense_1, batch_normalization_2): one of each in pre_classification.
    return re.sub(r"^pre_classification/(dense|batch_normalization)_\d+/", r"pre_classification/\1/", name)


_HEAD_ROOTS = ("patch_extraction", "pre_classification", "attention", "classification_head", "layernorm")
_KERAS_HEAD = {
    "patch_extraction/separable_conv2d/depthwise_kernel": ("patch_extraction.conv1.depthwise.weight", "depthwise"),
    "patch_extraction/separable_conv2d/pointwise_kernel": ("patch_extraction.conv1.pointwise.weight", "pointwise"),
    "patch_extraction/separable_conv2d/bias": ("patch_extraction.conv1.pointwise.bias", None),
    "patch_extraction/separable_conv2d_1/depthwise_kernel": ("patch_extraction.conv2.depthwise.weight", "depthwise"),
    "patch_extraction/separable_conv2d_1/pointwise_kernel": ("patch_extraction.conv2.pointwise.weight", "pointwise"),
    "patch_extraction/separable_conv2d_1/bias": ("patch_extraction.conv2.pointwise.bias", None),
    "pre_classification/dense/kernel": ("pre_classification.dense.weight", "dense"),
    "pre_classification/dense/bias": ("pre_classification.dense.bias", None),
    "pre_classification/batch_normalization/gamma": ("pre_classification.batch_normalization.weight", None),
    "pre_classification/batch_normalization/beta": ("pre_classification.batch_normalization.bias", None),
    "pre_classification/batch_normalization/moving_mean": ("pre_classification.batch_normalization.running_mean", None),
    "pre_classification/batch_normalization/moving_variance": (
        "pre_classification.batch_normalization.running_var", None),
    "attention/scale": ("attention.scale", "scalar"),
    "layernorm/gamma": ("layernorm.weight", None),
    "layernorm/beta": ("layernorm.bias", None),
}


def _keras_to_torch(value, kind: Optional[str]) -> Tensor:
    t = torch.as_tensor(value).float()
    if kind == "depthwise":  # (k, k, C, 1) → (C, 1, k, k)
        return t.permute(2, 3, 0, 1).contiguous()
    if kind == "pointwise":  # (1, 1, C_in, C_out) → (C_out, C_in, 1, 1)
        return t.permute(3, 2, 0, 1).contiguous()
    if kind == "dense":  # (in, out) → (out, in)
        return t.t().contiguous()
    if kind == "scalar":
        return t.reshape(())
    return t


def keras_head_to_convcut(weights: Mapping[str, object], native_labels: Optional[Sequence[str]] = None,
                          label_names: Optional[Sequence[str]] = None) -> dict:
    """Keras weight names → Conv-cut head/DET tensors, classifier rows permuted to the canonical order.

    ``weights``: Keras name (``layer/sublayer/weight[:0]``, any model prefix) → array. ``native_labels``: the
    classifier's row order in the Keras model; default alphabetical RAF-DB (7) or FERPlus (8) as in the
    released ``data.py``. Trunk weights in ``weights`` are ignored (load them from timm). Unmapped head
    names are an error.
    """
    out: dict = {}
    unknown = []
    head_w = head_b = None
    for name, value in weights.items():
        key = _keras_key(name)
        if key in _KERAS_HEAD:
            target, kind = _KERAS_HEAD[key]
            out[target] = _keras_to_torch(value, kind)
        elif key == "classification_head/kernel":
            head_w = _keras_to_torch(value, "dense")
        elif key == "classification_head/bias":
            head_b = _keras_to_torch(value, None)
        elif key.split("/", 1)[0] in _HEAD_ROOTS:
            unknown.append(name)
    if unknown:
        raise ValueError(f"weights: head weights with unknown names {unknown[:5]} (convcut.md §9)")
    if head_w is None:
        raise ValueError("weights: no 'classification_head/kernel'; is this a Conv-cut Keras model?")
    if native_labels is None:
        native_labels = {7: NATIVE_ORDERS["conv_cut_rafdb"], 8: NATIVE_ORDERS["conv_cut_ferplus"]}.get(head_w.shape[0])
        if native_labels is None:
            raise ValueError(f"native_labels: required for a {head_w.shape[0]}-class head")
    out["classification_head.weight"], bias = permute_classifier_rows(head_w, head_b, native_labels, label_names)
    if bias is not None:
        out["classification_head.bias"] = bias
    return out


def read_keras_h5(path) -> dict:
    """Every dataset of a Keras ``.h5`` weight file as ``{name: numpy array}`` (needs ``pip install h5py``)."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading Keras .h5 weights needs h5py (pip install h5py)") from e
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out
