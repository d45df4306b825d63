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
:func:`load_partial` (the official initialisation: IR-50 from face recognition, ViT from ImageNet).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

# The canonical expression order of the whole library (the data package holds the same tuple); 7-class
# models use the first seven.
EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
# APViT's logit order (FER_CLASSES in the official repo: Anger, Disgust, Fear, Sadness, Happiness, Surprise,
# Neutral, Contempt), spelled canonically.
APVIT_ORDER: tuple[str, ...] = ("anger", "disgust", "fear", "sad", "happy", "surprise", "neutral", "contempt")

SOURCES = ("apvit-mmcls", "ir50-evolve", "vit-small-v01")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model it is converted to."""


@dataclass
class Conversion:
    """Result of a conversion: the fastfer state_dict plus what was dropped, filled or renamed."""

    state_dict: dict[str, Tensor]
    source: str
    label_names: Optional[tuple[str, ...]] = None
    dropped: list[str] = field(default_factory=list)  # source keys deliberately not converted
    filled: list[str] = field(default_factory=list)  # target keys absent from the source, given defaults
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        meta = {"format": "fastfer", "architecture": "apvit", "source": self.source}
        if self.label_names is not None:
            meta["label_names"] = json.dumps(list(self.label_names))
        return meta

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.state_dict)} tensors converted"]
        if self.label_names is not None:
            lines.append(f"label_names: {', '.join(self.label_names)}")
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} source keys: {', '.join(self.dropped)}")
        if self.filled:
            lines.append(f"filled {len(self.filled)} missing keys with defaults: {', '.join(self.filled)}")
        lines.extend(self.notes)
        return "\n".join(lines)


# --- reading --------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a ``.pth`` (``weights_only=True``) or ``.safetensors`` file and return its state_dict.

    Unwraps ``{'state_dict': …}`` / ``{'model': …}`` (ignoring ``meta``, ``optimizer`` …) and strips a
    ``module.`` prefix. A missing, truncated or corrupt file raises :class:`CheckpointError` naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, forbidden global, bad header ...
        raise CheckpointError(
            f"checkpoint {path!r}: cannot be read ({type(err).__name__}: {err}); the file may be truncated or "
            f"corrupt, or not a weights-only PyTorch/safetensors file"
        ) from err
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, name: str = "checkpoint") -> dict[str, Tensor]:
    """``{'state_dict': sd, …}``, ``{'model': sd, …}`` or a bare ``sd`` → sd with ``module.`` stripped."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{name}: expected a state_dict (a non-empty dict of tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{name}: expected tensors only, these entries are not tensors: "
                              f"{', '.join(map(str, bad))}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# --- labels ---------------------------------------------------------------------------------------------------


def canonical_permutation(native: Sequence[str]) -> list[int]:
    """map[i] = canonical index of native class i (names already spelled canonically)."""
    unknown = [n for n in native if n not in EXPRESSIONS]
    if unknown:
        raise ValueError(f"native: expected canonical expression names {EXPRESSIONS}, got unknown {unknown}")
    return [EXPRESSIONS.index(n) for n in native]


def permute_rows(t: Tensor, native: Sequence[str]) -> Tensor:
    """Classifier rows (or bias) from ``native`` order to canonical order: out[map[i]] = t[i]."""
    mapping = canonical_permutation(native)
    if sorted(mapping) != list(range(len(mapping))):
        raise ValueError(f"native: classes {list(native)} are not the first {len(mapping)} canonical classes")
    out = torch.empty_like(t)
    out[mapping] = t
    return out


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


def _check_against(sd: dict[str, Tensor], target: dict[str, tuple[int, ...]], source: str, strict: bool,
                   conv: Conversion, required: Optional[Callable[[str], bool]] = None) -> None:
    """Shape check, unknown keys (error when strict, else dropped), missing keys (error; BN counters filled)."""
    for key in list(sd):
        if key not in target:
            continue
        if tuple(sd[key].shape) != target[key]:
            raise CheckpointError(
                f"{source}: {key}: expected shape {target[key]} for the fastfer model, got {tuple(sd[key].shape)}"
            )
    unknown = [k for k in sd if k not in target]
    if unknown and strict:
        raise CheckpointError(f"{source}: {len(unknown)} keys the model does not have: {', '.join(unknown)}")
    for k in unknown:
        conv.dropped.append(k)
        del sd[k]
    needed = [k for k in target if (required is None or required(k)) and k not in sd]
    counters = [k for k in needed if k.endswith("num_batches_tracked")]
    for k in counters:  # checkpoints from torch < 0.4.1 have no BN step counter; it is unused in eval
        sd[k] = torch.zeros((), dtype=torch.int64)
        conv.filled.append(k)
    missing = [k for k in needed if k not in counters]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} keys missing from the checkpoint: {', '.join(missing)}")


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
    conv = Conversion({}, "apvit-mmcls")
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
    _check_against(conv.state_dict, _target_shapes(num_classes, model, **model_kwargs), "apvit-mmcls", strict, conv)
    native = APVIT_ORDER[:num_classes]
    for key in ("head.weight", "head.bias"):
        conv.state_dict[key] = permute_rows(conv.state_dict[key], native)
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
    _check_against(conv.state_dict, target, "ir50-evolve", strict, conv, required=lambda k: k.startswith("extractor."))
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
    _check_against(conv.state_dict, target, "vit-small-v01", strict, conv, required=lambda k: bool(vit_part.match(k)))
    conv.notes.append("the v0.1 weights were pre-trained with attention scale 768**-0.5; APViT uses 96**-0.5")
    return conv


CONVERTERS: dict[str, Callable[..., Conversion]] = {
    "apvit-mmcls": convert_apvit_mmcls,
    "ir50-evolve": convert_ir50_evolve,
    "vit-small-v01": convert_vit_small_v01,
}


def convert_file(source: str, src: str | os.PathLike, dst: str | os.PathLike, strict: bool = True,
                 **model_kwargs) -> Conversion:
    """Read ``src``, convert it with the ``source`` converter and write ``dst`` as safetensors (with metadata)."""
    if source not in CONVERTERS:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    conv = CONVERTERS[source](read_checkpoint(src), strict=strict, **model_kwargs)
    conv.notes.append(f"converted from {os.path.basename(os.fspath(src))}")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in conv.state_dict.items()}, os.fspath(dst), metadata=conv.metadata())
    return conv


def load_partial(model: torch.nn.Module, source) -> list[str]:
    """Load a partial fastfer state_dict (path or dict) into ``model``; returns the model keys it left alone.

    Keys the model does not have and shape mismatches are errors (named); use it to start from the
    converted IR-50 and ViT-S parts as the official training does.
    """
    sd = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else unwrap_state_dict(source)
    own = model.state_dict()
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise CheckpointError(f"load_partial: {len(unknown)} keys the model does not have: {', '.join(unknown)}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"load_partial: {k}: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
    model.load_state_dict(sd, strict=False)
    return [k for k in own if k not in sd]


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model=None) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: fastfer state_dicts pass through; official APViT ones are converted."""
    sd = unwrap_state_dict(state_dict)
    if "head.fc.weight" in sd and any(k.startswith("vit.") for k in sd):
        return convert_apvit_mmcls(sd, model=model).state_dict
    return sd
