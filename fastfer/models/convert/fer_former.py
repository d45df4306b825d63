"""Convert FER-former weights into fastfer's :class:`~fastfer.models.fer_former.FerFormer` layout.

Two sources:

- the official ``ModelClassifier.state_dict()`` (docs/models/ferformer.md §11; no checkpoint was released, so this is for
  models users trained with the official code): :func:`convert_official`;
- face.evoLVe's IR-50 (``backbone_ir50_ms1m_epoch63.pth``) to initialise the backbone: :func:`convert_evolve_ir50`.

Official → fastfer names::

    backbone.input_layer.*            → backbone.input_layer.*
    backbone.body.{0..20}.*           → backbone.body.{stage}.{unit}.*   (units 21–23 = stage 4: dropped)
    backbone.output_layer.*, model.*  → dropped (face-embedding head; torchextractor's duplicate of the backbone)
    token1/3/4/5.1.*                  → patch_embed.p2/p4/p6/p12.*        (token2 = p 3, unused: dropped)
    vit.cls_token, vit.clip_token     → cls_token, clip_token
    vit.pos_embed                     → dropped (defined, never added)
    vit.norm.*                        → token_norm.*                      (BatchNorm1d over the 50 positions)
    vit.blocks.{i}.*                  → blocks.{i}.*                      (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/2)
    vit.head.0.*                      → head.*, rows permuted RAF-DB order → canonical
    fc2.*                             → text_proj.*;   fc1.* → dropped

The result has no ``text_embed`` (the released model recomputed CLIP features every step and stored none): a
model loading it adopts ``text_proj`` and has no text features until ``model.build_text_features(...)`` runs. ``timm.create_model(
"fer_former", pretrained=True, pretrained_cfg_overlay=dict(file=OFFICIAL.pth))`` converts on load
(:func:`checkpoint_filter_fn`). ``fastfer convert --from fer-former SRC DST`` writes the result.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from fastfer.labels import NATIVE_ORDERS, permute_classifier_rows
from fastfer.models.irse import remap_evolve_body
from fastfer.models.weights import unwrap_state_dict

OFFICIAL_LABELS: tuple[str, ...] = NATIVE_ORDERS["fer_former"]  # surprise, fear, disgust, happy, sad, angry, neutral
TOKEN_PATCH_SIZES = {1: 2, 2: 3, 3: 4, 4: 6, 5: 12}  # official tokenN → patch size
USED_PATCH_SIZES = (2, 4, 6, 12)
_RENAMES = (
    (re.compile(r"^vit\.(cls_token|clip_token)$"), r"\1"),
    (re.compile(r"^vit\.norm\.(.+)$"), r"token_norm.\1"),
    (re.compile(r"^vit\.blocks\.(\d+)\.(.+)$"), r"blocks.\1.\2"),
    (re.compile(r"^fc2\.(weight|bias)$"), r"text_proj.\1"),
)
_DROPPED = re.compile(r"^(model\.|backbone\.output_layer\.|vit\.pos_embed$|vit\.pos_drop|fc1\.)")


def convert_official(state_dict: dict, label_names: Optional[Sequence[str]] = None,
                     native_labels: Sequence[str] = OFFICIAL_LABELS, num_stages: int = 3,
                     dropped: Optional[list] = None) -> dict:
    """Official FER-former state_dict → FerFormer state_dict (without ``text_embed``).

    Args:
        state_dict: the released ``ModelClassifier`` tensors (a ``state_dict``/``model`` wrapper and a
            ``module.`` prefix are accepted).
        label_names: target row order of the label head (default: canonical order for the head's size).
        native_labels: the head's row order in the checkpoint (released: RAF-DB order, 7 classes; pass the
            8-name order for a model trained on 8 classes).
        num_stages: IR stages kept (3 as in the paper).
        dropped: when a list, receives the names of the tensors left out (dead weight of the released model).

    Unknown keys are an error (a checkpoint of another model is never half-converted).
    """
    sd = unwrap_state_dict(state_dict)
    out: dict = {}
    backbone = {}
    unknown = []
    for key, value in sd.items():
        if _DROPPED.match(key):
            _note(dropped, key)
        elif key.startswith("backbone."):
            backbone[key[len("backbone."):]] = value
        elif (m := re.match(r"^token(\d)\.1\.(weight|bias)$", key)) and int(m.group(1)) in TOKEN_PATCH_SIZES:
            p = TOKEN_PATCH_SIZES[int(m.group(1))]
            if p in USED_PATCH_SIZES:
                out[f"patch_embed.p{p}.{m.group(2)}"] = value
            else:
                _note(dropped, key)
        elif key.startswith("vit.head.0."):
            continue  # permuted below
        else:
            for pattern, repl in _RENAMES:
                if pattern.match(key):
                    out[pattern.sub(repl, key)] = value
                    break
            else:
                unknown.append(key)
    if unknown:
        raise ValueError(f"state_dict: {len(unknown)} keys are not in the official FER-former layout "
                         f"(docs/models/ferformer.md §11), e.g. {unknown[:5]}")
    if "vit.head.0.weight" not in sd:
        raise ValueError("state_dict: no 'vit.head.0.weight'; is this an official FER-former checkpoint?")
    dropped_body: list[str] = []
    for key, value in remap_evolve_body(backbone, 50, num_stages, dropped_body).items():
        out[f"backbone.{key}"] = value
    for key in dropped_body:
        _note(dropped, f"backbone.{key}")
    weight, bias = sd["vit.head.0.weight"], sd.get("vit.head.0.bias")
    if weight.shape[0] != len(native_labels):
        raise ValueError(f"native_labels: the head has {weight.shape[0]} rows, got {len(native_labels)} names "
                         f"{tuple(native_labels)}")
    out["head.weight"], head_bias = permute_classifier_rows(weight, bias, native_labels, label_names)
    if head_bias is not None:
        out["head.bias"] = head_bias
    # No CLIP features in the released model: no text_embed (the model builds it with build_text_features).
    return out


def convert_evolve_ir50(state_dict: dict, num_stages: int = 3, dropped: Optional[list] = None) -> dict:
    """face.evoLVe IR-50 file → ``backbone.*`` keys of FerFormer; load with ``strict=False`` (D10).

    The output layer and the stages past ``num_stages`` are dropped (names into ``dropped``)."""
    sd = unwrap_state_dict(state_dict)
    remapped = remap_evolve_body(sd, 50, num_stages, dropped)
    bad = [k for k in remapped if not k.startswith(("input_layer.", "body."))]
    if bad:
        raise ValueError(f"state_dict: keys {bad[:5]} are not face.evoLVe IR-50 keys")
    return {f"backbone.{k}": v for k, v in remapped.items()}


def load_official(model, state_dict: dict, native_labels: Sequence[str] = OFFICIAL_LABELS) -> list[str]:
    """Convert and load an official state_dict into ``model`` (strict, except ``pos_embed`` when the model has
    one); returns the dropped names."""
    dropped: list[str] = []
    converted = convert_official(state_dict, model.label_names, native_labels, model.backbone.num_stages, dropped)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if k != "pos_embed"]
    if missing or result.unexpected_keys:
        raise ValueError(f"state_dict does not fit this model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return dropped


def checkpoint_filter_fn(state_dict: dict, model) -> dict:
    """timm ``pretrained_filter_fn``: an official FER-former state_dict is converted, a fastfer one passes."""
    sd = unwrap_state_dict(state_dict)
    if "vit.head.0.weight" in sd:
        return convert_official(sd, model.label_names, num_stages=model.backbone.num_stages)
    return sd


def _note(dropped: Optional[list], key: str) -> None:
    if dropped is not None:
        dropped.append(key)
