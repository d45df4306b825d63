"""Converters from published checkpoints into fastfer APViT state_dicts (saved as safetensors).

- ``apvit-mmcls``: the official APViT release (mmcv ``{'state_dict': …}`` with ``extractor.*``, ``vit.*``,
  ``head.fc.*``) → a complete APViT state_dict, classifier rows permuted from APViT's class order to the
  canonical order.
- ``ir50-evolve``: face.evoLVe IR-50 backbone (flat ``body.{0..23}``) → the ``extractor.*`` part (stages 1–3).
- ``vit-small-v01``: timm v0.1 ``vit_small_p16_224`` (768-d, 8 blocks, 8 heads) → the ViT part
  (``pos_embed[:, 0]`` → ``cls_pos_embed``, ``pos_embed[:, 1:]`` → ``patch_pos_embed``).

``.pth`` files are read with ``torch.load(weights_only=True)``. Every converter checks names and shapes against
the model it targets: keys it does not know and keys it needs but cannot find are listed by name, shape
mismatches name the key and both shapes. The two partial converters produce state_dicts for
:func:`fastfer.models.weights.load_partial` (the official initialisation: IR-50 from face recognition, ViT from
ImageNet).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from fastfer.labels import EXPRESSIONS, NATIVE_ORDERS, permute_classifier_rows
from fastfer.models.convert.common import Conversion, check_against
from fastfer.models.weights import unwrap_state_dict
from fastfer.utils.errors import CheckpointError

APVIT_ORDER: tuple[str, ...] = NATIVE_ORDERS["apvit"]  # the official FER_CLASSES logit order


# --- target shapes --------------------------------------------------------------------------------------------


def _target_shapes(num_classes: int, model=None, **model_kwargs) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the target APViT state_dict: ``model``'s, else an APViT built on the meta device
    (no memory, no init cost) from ``model_kwargs``. The head is sized for ``num_classes``."""
    if model is None:
        from fastfer.models.apvit import APViT

        with torch.device("meta"):
            model = APViT(num_classes=num_classes, **model_kwargs)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if "head.weight" in shapes:
        shapes["head.weight"] = (num_classes, shapes["head.weight"][1])
        shapes["head.bias"] = (num_classes,)
    return shapes


# --- converters -----------------------------------------------------------------------------------------------

_APVIT_RENAMES = (
    ("vit.projs.0.", "proj."),
    ("vit.blocks.", "blocks."),
    ("vit.norm.", "norm."),
    ("head.fc.", "head."),
    ("extractor.", "extractor."),
)
_APVIT_TOKENS = {"vit.cls_token": "cls_token", "vit.cls_pos_embed": "cls_pos_embed",
                 "vit.patch_pos_embed": "patch_pos_embed"}


def convert_apvit_mmcls(state_dict: dict[str, Tensor], strict: bool = True, model=None,
                        **model_kwargs) -> Conversion:
    """Official APViT (mmcls) state_dict → complete fastfer APViT state_dict, head rows in canonical order.

    The target is ``model`` if given, else the paper configuration changed by ``model_kwargs``.
    With ``strict`` (default) source keys that map to nothing in the model are an error; otherwise they are
    dropped and listed.
    """
    sd = unwrap_state_dict(state_dict, "apvit-mmcls")
    # A whole model: the file alone rebuilds it (unless converted for a caller's own model object).
    conv = Conversion({}, "apvit-mmcls", complete=model is None, model_kwargs=dict(model_kwargs))
    for key, value in sd.items():
        new = _APVIT_TOKENS.get(key)
        if new is None:
            new = next((dst + key[len(src):] for src, dst in _APVIT_RENAMES if key.startswith(src)), None)
        if new is None:
            if strict:
                raise CheckpointError(f"apvit-mmcls: key {key!r} is not part of an APViT checkpoint (expected "
                                      f"extractor.*, vit.projs.0.*, vit.blocks.*, vit.norm.*, vit.*_token/pos_embed, "
                                      f"head.fc.*)")
            conv.dropped.append(key)
            continue
        conv.state_dict[new] = value
    if "head.weight" not in conv.state_dict:
        raise CheckpointError("apvit-mmcls: keys missing from the checkpoint: head.fc.weight, head.fc.bias")
    num_classes = conv.state_dict["head.weight"].shape[0]
    if num_classes not in (7, 8):
        raise CheckpointError(f"apvit-mmcls: head.fc.weight: expected 7 or 8 classes (APViT's FER_CLASSES), got "
                              f"{num_classes}; the class order of such a head is unknown")
    check_against(conv.state_dict, _target_shapes(num_classes, model, **model_kwargs), "apvit-mmcls", strict, conv)
    native = APVIT_ORDER[:num_classes]
    conv.state_dict["head.weight"], conv.state_dict["head.bias"] = permute_classifier_rows(
        conv.state_dict["head.weight"], conv.state_dict["head.bias"], native)
    conv.label_names = EXPRESSIONS[:num_classes]
    conv.notes.append(f"head rows permuted from APViT order ({', '.join(native)}) to canonical order")
    return conv


def convert_ir50_evolve(state_dict: dict[str, Tensor], strict: bool = True, model=None,
                        **model_kwargs) -> Conversion:
    """face.evoLVe IR-50 backbone → ``extractor.*`` of APViT (stages 1–3; stage 4 and output layer dropped)."""
    from fastfer.models.irse import remap_evolve_body

    sd = unwrap_state_dict(state_dict, "ir50-evolve")
    conv = Conversion({}, "ir50-evolve")
    try:
        stages = model.extractor.num_stages if model is not None else model_kwargs.get("ir_stages", 3)
        remapped = remap_evolve_body(sd, 50, stages, conv.dropped)
    except ValueError as err:
        raise CheckpointError(f"ir50-evolve: {err}") from None
    conv.state_dict = {f"extractor.{k}": v for k, v in remapped.items()}
    target = _target_shapes(7, model, **model_kwargs)
    check_against(conv.state_dict, target, "ir50-evolve", strict, conv, required=lambda k: k.startswith("extractor."))
    conv.notes.append("face.evoLVe trained with mean/std 0.5/0.5; APViT fine-tunes with ImageNet statistics")
    return conv


_VIT_KEEP = re.compile(r"^(cls_token|blocks\.\d+\..+|norm\.(weight|bias))$")


def convert_vit_small_v01(state_dict: dict[str, Tensor], strict: bool = True, model=None,
                          **model_kwargs) -> Conversion:
    """timm v0.1 ``vit_small_p16_224`` → APViT's ViT part (tokens, pos-embeds, blocks, final norm).

    ``patch_embed.*`` and ``head.*`` are dropped (APViT embeds CNN features and has its own head). The 196
    patch positions are used as they are (14×14 = APViT's trunk map; no interpolation).
    """
    sd = unwrap_state_dict(state_dict, "vit-small-v01")
    conv = Conversion({}, "vit-small-v01")
    target = _target_shapes(7, model, **model_kwargs)
    if "pos_embed" not in sd:
        raise CheckpointError("vit-small-v01: keys missing from the checkpoint: pos_embed")
    pos = sd["pos_embed"]
    n_patch, dim = target["patch_pos_embed"][1:]
    if pos.dim() != 3 or tuple(pos.shape) != (1, n_patch + 1, dim):
        raise CheckpointError(f"vit-small-v01: pos_embed: expected shape (1, {n_patch + 1}, {dim}) (CLS + "
                              f"{n_patch} patches), got {tuple(pos.shape)}")
    conv.state_dict["cls_pos_embed"] = pos[:, :1].contiguous().clone()
    conv.state_dict["patch_pos_embed"] = pos[:, 1:].contiguous().clone()
    for key, value in sd.items():
        if key == "pos_embed":
            continue
        if _VIT_KEEP.match(key):
            conv.state_dict[key] = value
        elif key.startswith(("patch_embed.", "head.")):
            conv.dropped.append(key)
        else:
            conv.state_dict[key] = value  # unknown: _check_against reports (strict) or drops it
    vit_part = re.compile(r"^(cls_token|cls_pos_embed|patch_pos_embed|blocks\..+|norm\..+)$")
    check_against(conv.state_dict, target, "vit-small-v01", strict, conv, required=lambda k: bool(vit_part.match(k)))
    conv.notes.append("the v0.1 weights were pre-trained with attention scale 768**-0.5; APViT uses 96**-0.5")
    return conv


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model=None) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: fastfer state_dicts pass through; official APViT ones are converted."""
    sd = unwrap_state_dict(state_dict)
    if "head.fc.weight" in sd and any(k.startswith("vit.") for k in sd):
        return convert_apvit_mmcls(sd, model=model).state_dict
    return sd
