"""The released Conv-cut Keras model (``.h5``) → a complete fastfer Conv-cut state_dict, trunk included.

Keras names (``keras.applications.ConvNeXtBase`` + the Conv-cut head, docs/models/convcut.md §9), with ``P`` the
applications' model prefix (``convnext_base``) and ``B`` = ``P_stage_{s}_block_{b}``. Layouts: conv = Keras
(kh, kw, in/groups, out) → (out, in/groups, kh, kw); Dense = (in, out) → (out, in); depthwise = SeparableConv2D
(k, k, C, 1) → (C, 1, k, k); pointwise = (1, 1, in, out) → (out, in, 1, 1).

| Keras layer / weight | fastfer key | layout |
|---|---|---|
| ``P_stem_conv/{kernel,bias}``, ``P_stem_layernorm/{gamma,beta}`` | ``base_model.stem.{0,1}.*`` | conv |
| ``P_downsampling_{layernorm,conv}_{i}/*`` | ``base_model.stages.{i+1}.downsample.{0,1}.*`` | conv |
| ``B_depthwise_conv/*``, ``B_layernorm/*`` | ``base_model.stages.{s}.blocks.{b}.{conv_dw,norm}.*`` | conv |
| ``B_pointwise_conv_{1,2}/*``, ``B_layer_scale/<any>`` | ``….blocks.{b}.mlp.fc{1,2}.*``, ``….gamma`` | Dense |
| ``P_prestem_normalization/*``, ``P_head_*``, stage 3 | dropped (ImageNet mean/std is in preprocessing) | |
| ``patch_extraction/separable_conv2d{,_1}/*`` | ``patch_extraction.conv{1,2}.{depthwise,pointwise}.*`` | dw / pw |
| ``pre_classification/{dense*,batch_normalization*}/*`` | ``pre_classification.{dense,batch_normalization}.*`` | Dense |
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
UNKNOWN = "?"  # trunk_key: a weight name a ConvNeXt layer does not have


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
    """A Keras ConvNeXt weight name → (fastfer key, layout kind); (None, None) when dropped by design,
    (UNKNOWN, None) for an unexpected weight of a ConvNeXt layer, None when the name is not a ConvNeXt layer's."""
    layer, weight = _split(name)
    m = _TRUNK_LAYER.match(layer)
    if m is None:
        return None
    if m["drop"]:
        return None, None
    if m["stem"]:
        module, table, kind = ("base_model.stem.0", _LINEAR, "conv") if m["stem"] == "stem_conv" else (
            "base_model.stem.1", _NORM, None)
    elif m["ds"]:
        stage = int(m["ds_i"]) + 1
        if stage >= TRUNK_STAGES:
            return None, None
        module, table, kind = ((f"base_model.stages.{stage}.downsample.1", _LINEAR, "conv") if m["ds"] == "conv"
                               else (f"base_model.stages.{stage}.downsample.0", _NORM, None))
    else:
        stage, block = int(m["stage"]), int(m["block"])
        if stage >= TRUNK_STAGES:
            return None, None
        prefix = f"base_model.stages.{stage}.blocks.{block}"
        if m["part"] == "layer_scale":
            return f"{prefix}.gamma", None  # LayerScale's single weight (Keras names it Variable / gamma)
        part, table, kind = _BLOCK_PART[m["part"]]
        module = f"{prefix}.{part}"
    if weight not in table:
        return UNKNOWN, None
    return f"{module}.{table[weight]}", kind if weight == "kernel" else None


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
        if key == UNKNOWN:
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
    width_keys = ("base_model.stem.0.weight", "base_model.stages.1.downsample.1.weight",
                  "base_model.stages.2.downsample.1.weight")
    blocks = [[int(m.group(1)) for k in sd if (m := re.match(rf"base_model\.stages\.{s}\.blocks\.(\d+)\.", k))]
              for s in range(TRUNK_STAGES)]
    try:
        dims = tuple(int(sd[k].shape[0]) for k in width_keys)
        depths = tuple(1 + max(b) for b in blocks)
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
