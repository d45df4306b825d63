"""The released Conv-cut Keras model (``.h5``) → a complete fastfer Conv-cut state_dict, trunk included.

Keras names (``keras.applications.ConvNeXtBase`` + the Conv-cut head, convcut.md §9), with ``P`` the
applications' model prefix (``convnext_base``) and the conversion of each kernel layout:

| Keras layer / weight | fastfer key | layout |
|---|---|---|
| ``P_stem_conv/{kernel,bias}`` | ``base_model.stem.0.*`` | conv (kh, kw, in, out) → (out, in, kh, kw) |
| ``P_stem_layernorm/{gamma,beta}`` | ``base_model.stem.1.{weight,bias}`` | |
| ``P_downsampling_layernorm_{i}/*`` | ``base_model.stages.{i+1}.downsample.0.*`` | |
| ``P_downsampling_conv_{i}/*`` | ``base_model.stages.{i+1}.downsample.1.*`` | conv |
| ``P_stage_{s}_block_{b}_depthwise_conv/*`` | ``base_model.stages.{s}.blocks.{b}.conv_dw.*`` | conv (7, 7, 1, C) → (C, 1, 7, 7) |
| ``P_stage_{s}_block_{b}_layernorm/*`` | ``….blocks.{b}.norm.*`` | |
| ``P_stage_{s}_block_{b}_pointwise_conv_{1,2}/*`` | ``….blocks.{b}.mlp.fc{1,2}.*`` | Dense (in, out) → (out, in) |
| ``P_stage_{s}_block_{b}_layer_scale/<any>`` | ``….blocks.{b}.gamma`` | |
| ``P_prestem_normalization/*``, ``P_head_*``, stage 3 | dropped (ImageNet mean/std is fastfer's preprocessing) | |
| ``patch_extraction/separable_conv2d{,_1}/*`` | ``patch_extraction.conv{1,2}.{depthwise,pointwise}.*`` | depthwise (k, k, C, 1) → (C, 1, k, k), pointwise (1, 1, in, out) → (out, in, 1, 1) |
| ``pre_classification/dense*/*``, ``…/batch_normalization*/*`` | ``pre_classification.{dense,batch_normalization}.*`` | Dense |
| ``attention/scale`` | ``attention.scale`` (``attention="keras_batch"``) | scalar |
| ``classification_head/*`` | ``classification_head.*``, rows permuted to the canonical order | Dense |
| ``layernorm/{gamma,beta}`` (stage-1 model only) | ``layernorm.*`` (``det_norm=True``) | |

Names are matched on their last two path parts (layer, weight), so any nesting (``model_weights/base_model/…``,
Sequential groups, ``:0`` suffixes) converts; ``optimizer_weights/`` (a full-model save) is skipped. The target
model's configuration (widths, blocks, cut, DET width, classes, ``det_norm``) is read from the weights, so a
narrow test model converts as the released ConvNeXt-B one does.

Inputs: a Keras ``.h5`` (needs ``pip install h5py``) or an ``.npz`` dump of ``{w.name: w.numpy() for w in
model.weights}`` (no h5py needed).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fastfer.labels import NATIVE_ORDERS, permute_classifier_rows
from fastfer.utils.errors import CheckpointError

SOURCE = "conv-cut-keras"
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
_TRUNK_LAYER = re.compile(
    r"^convnext_[a-z]+_(?:(?P<stem>stem_conv|stem_layernorm)"
    r"|downsampling_(?P<ds>layernorm|conv)_(?P<ds_i>\d+)"
    r"|stage_(?P<stage>\d+)_block_(?P<block>\d+)_(?P<part>depthwise_conv|layernorm|pointwise_conv_1|pointwise_conv_2"
    r"|layer_scale)"
    r"|(?P<drop>prestem_normalization|head_\w+))$")
_NORM = {"gamma": "weight", "beta": "bias"}
_LINEAR = {"kernel": "weight", "bias": "bias"}
_BLOCK_PART = {"depthwise_conv": ("conv_dw", _LINEAR, "conv"), "layernorm": ("norm", _NORM, None),
               "pointwise_conv_1": ("mlp.fc1", _LINEAR, "dense"), "pointwise_conv_2": ("mlp.fc2", _LINEAR, "dense")}
TRUNK_STAGES = 3  # Conv-cut keeps ConvNeXt stages 0-2 (stage 3 and the head are past the cut)


def _keras_to_torch(value, kind: Optional[str]) -> Tensor:
    t = torch.as_tensor(np.asarray(value)).float()
    if kind == "depthwise":  # SeparableConv2D (k, k, C, 1) → (C, 1, k, k)
        return t.permute(2, 3, 0, 1).contiguous()
    if kind == "pointwise":  # (1, 1, C_in, C_out) → (C_out, C_in, 1, 1)
        return t.permute(3, 2, 0, 1).contiguous()
    if kind == "conv":  # Conv2D (kh, kw, C_in / groups, C_out) → (C_out, C_in / groups, kh, kw)
        return t.permute(3, 2, 0, 1).contiguous()
    if kind == "dense":  # (in, out) → (out, in)
        return t.t().contiguous()
    if kind == "scalar":
        return t.reshape(())
    return t


def _split(name: str) -> tuple[str, str]:
    """'model_weights/base_model/convnext_base_stem_conv/kernel:0' → ('convnext_base_stem_conv', 'kernel')."""
    parts = re.sub(r":\d+$", "", name).split("/")
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


def _keras_key(name: str) -> str:
    """Strip the model/group prefix and the ``:0`` suffix of a head weight name:
    'model/patch_extraction/patch_extraction/separable_conv2d/depthwise_kernel:0'
    → 'patch_extraction/separable_conv2d/depthwise_kernel' (the right-most head-layer name starts the key)."""
    name = re.sub(r":\d+$", "", name)
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=/))(" + "|".join(_HEAD_ROOTS) + r")/", name)]
    if starts:
        name = name[starts[-1]:]
    # Keras numbers repeated layer names (dense_1, batch_normalization_2): one of each in pre_classification.
    return re.sub(r"^pre_classification/(dense|batch_normalization)_\d+/", r"pre_classification/\1/", name)


def trunk_key(name: str) -> Optional[tuple[Optional[str], Optional[str]]]:
    """A Keras ConvNeXt weight name → (fastfer key or None when dropped by design, layout kind); None when the
    name is not a Keras ConvNeXt weight."""
    layer, weight = _split(name)
    m = _TRUNK_LAYER.match(layer)
    if m is None:
        return None
    if m["drop"]:
        return None, None
    if m["stem"]:
        table, idx, kind = (_LINEAR, 0, "conv") if m["stem"] == "stem_conv" else (_NORM, 1, None)
        return (f"base_model.stem.{idx}.{table[weight]}" if weight in table else "?"), kind if weight == "kernel" else None
    if m["ds"]:
        stage = int(m["ds_i"]) + 1
        if stage >= TRUNK_STAGES:
            return None, None
        table, idx, kind = (_LINEAR, 1, "conv") if m["ds"] == "conv" else (_NORM, 0, None)
        key = f"base_model.stages.{stage}.downsample.{idx}.{table[weight]}" if weight in table else "?"
        return key, kind if weight == "kernel" else None
    stage, block = int(m["stage"]), int(m["block"])
    if stage >= TRUNK_STAGES:
        return None, None
    prefix = f"base_model.stages.{stage}.blocks.{block}"
    if m["part"] == "layer_scale":
        return f"{prefix}.gamma", None  # LayerScale's single weight (Keras names it Variable / gamma)
    module, table, kind = _BLOCK_PART[m["part"]]
    if weight not in table:
        return "?", None
    return f"{prefix}.{module}.{table[weight]}", kind if weight == "kernel" else None


def keras_head_to_convcut(weights: Mapping[str, object], native_labels: Optional[Sequence[str]] = None,
                          label_names: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """Keras head weight names → Conv-cut DET/head tensors, classifier rows permuted to the canonical order.

    ``weights``: Keras name (``layer/sublayer/weight[:0]``, any model prefix) → array; trunk names are left
    for :func:`keras_to_convcut`. ``native_labels``: the classifier's row order in the Keras model; default
    alphabetical RAF-DB (7) or FERPlus (8) as in the released ``data.py``. Unmapped head names are an error.
    """
    out: dict[str, Tensor] = {}
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
        raise CheckpointError(f"{SOURCE}: head weights with unknown names {unknown[:5]} (expected the Conv-cut "
                              f"head: separable_conv2d{{,_1}}, dense, batch_normalization, scale, kernel/bias)")
    if head_w is None:
        raise CheckpointError(f"{SOURCE}: no 'classification_head/kernel'; is this a Conv-cut Keras model?")
    if native_labels is None:
        native_labels = {7: NATIVE_ORDERS["conv_cut_rafdb"], 8: NATIVE_ORDERS["conv_cut_ferplus"]}.get(head_w.shape[0])
        if native_labels is None:
            raise CheckpointError(f"{SOURCE}: native_labels: required for a {head_w.shape[0]}-class head (the "
                                  f"released orders are for 7 and 8 classes)")
    out["classification_head.weight"], bias = permute_classifier_rows(head_w, head_b, native_labels, label_names)
    if bias is not None:
        out["classification_head.bias"] = bias
    return out


def keras_to_convcut(weights: Mapping[str, object], native_labels: Optional[Sequence[str]] = None,
                     label_names: Optional[Sequence[str]] = None, strict: bool = True,
                     dropped: Optional[list] = None) -> dict[str, Tensor]:
    """Every weight of a Conv-cut Keras model (trunk + head) → fastfer ``conv_cut`` tensors.

    Weights dropped by design (input normalisation, ConvNeXt stage 3 / head, optimizer slots) go to
    ``dropped``. A name that is neither a Keras ConvNeXt nor a Conv-cut head weight is an error naming it
    (``strict=False``: dropped and listed).
    """
    out: dict[str, Tensor] = {}
    head: dict[str, object] = {}
    unknown = []
    for name, value in weights.items():
        if name.startswith("optimizer_weights/"):
            _note(dropped, name)
            continue
        mapped = trunk_key(name)
        if mapped is None:
            if _keras_key(name).split("/", 1)[0] in _HEAD_ROOTS:
                head[name] = value
            else:
                unknown.append(name)
            continue
        key, kind = mapped
        if key == "?":
            unknown.append(name)
        elif key is None:
            _note(dropped, name)
        elif key in out:
            raise CheckpointError(f"{SOURCE}: {name}: a second weight for {key} (two ConvNeXt models in one file?)")
        else:
            out[key] = _keras_to_torch(value, kind)
    if unknown and strict:
        raise CheckpointError(f"{SOURCE}: {len(unknown)} weights are neither Keras ConvNeXt nor Conv-cut head "
                              f"weights: {', '.join(unknown[:6])}{' …' if len(unknown) > 6 else ''} (pass "
                              f"--non-strict to drop them)")
    for name in unknown:
        _note(dropped, name)
    if not any(k.startswith("base_model.") for k in out):
        raise CheckpointError(f"{SOURCE}: no Keras ConvNeXt trunk weights (convnext_*_stem_conv, …_stage_*_block_*); "
                              f"is this the full Conv-cut model?")
    out.update(keras_head_to_convcut(head, native_labels, label_names))
    return out


def infer_model_kwargs(sd: Mapping[str, Tensor]) -> dict:
    """The ``conv_cut`` arguments a converted state_dict was made for (widths, built blocks, cut, DET width,
    Dense width, classes, DET norm; always ``attention="keras_batch"``: the released head)."""
    try:
        dims = tuple(int(sd[k].shape[0]) for k in ("base_model.stem.0.weight", "base_model.stages.1.downsample.1.weight",
                                                    "base_model.stages.2.downsample.1.weight"))
        depths = tuple(1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"base_model\.stages\.{s}\.blocks\.(\d+)\.",
                                                                                k)))
                       for s in range(TRUNK_STAGES))
        det_dim = int(sd["patch_extraction.conv1.pointwise.weight"].shape[0])
        hidden = int(sd["pre_classification.dense.weight"].shape[0])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{SOURCE}: the weights miss a part of the trunk or DET ({err}); expected stem, "
                              f"stages 0-2 with their downsampling layers, and both separable convs") from None
    last = f"base_model.stages.2.blocks.{depths[2] - 1}.mlp.fc1.weight"
    return dict(num_classes=int(sd["classification_head.weight"].shape[0]), attention="keras_batch",
                dims=dims, depths=depths, cut="block22" if last in sd else "block23_norm", det_dim=det_dim,
                hidden_dim=hidden, det_norm="layernorm.weight" in sd)


def read_keras_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a Keras ``.h5`` (model or weights file; needs h5py) or of an ``.npz`` dump as
    ``{name: array}``; a full-model ``.h5`` is read from its ``model_weights`` group."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{SOURCE}: {path!r}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{SOURCE}: {path!r} is not a readable .npz ({err})") from None
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{SOURCE}: reading {path!r} needs h5py (pip install h5py), or pass an .npz dump "
                              f"of {{w.name: w.numpy() for w in model.weights}}") from None
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            root.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                            else None)
    except OSError as err:
        raise CheckpointError(f"{SOURCE}: {path!r} is not a readable HDF5 file ({err})") from None
    if not out:
        raise CheckpointError(f"{SOURCE}: {path!r} holds no weights")
    return out


def _note(dropped: Optional[list], key: str) -> None:
    if dropped is not None:
        dropped.append(key)
