"""Converters from published checkpoints to fastfer state_dicts, every one reachable from ``fastfer convert``.

| ``--from`` | input | output |
|---|---|---|
| ``apvit-mmcls`` | official APViT release (mmcls ``.pth``) | complete ``apvit`` state_dict, head rows canonical |
| ``ir50-evolve`` | face.evoLVe IR-50 backbone | ``extractor.*`` of APViT (stages 1–3) |
| ``vit-small-v01`` | timm v0.1 ``vit_small_p16_224`` | APViT's ViT part (tokens, pos-embeds, blocks, norm) |
| ``fer-former`` | official FER-former ``ModelClassifier`` state_dict | complete ``fer_former`` state_dict |
| ``convnext-b`` | timm ``convnext_base`` state_dict | Conv-cut trunk ``base_model.*`` |
| ``conv-cut-keras`` | released Conv-cut Keras ``.h5`` (needs h5py) or ``.npz`` | complete ``conv_cut`` (trunk + head) |

:func:`convert_file` reads a file, converts it and writes safetensors with metadata naming the architecture and
the label names (complete conversions also carry the ``fastfer`` model metadata, so
:func:`fastfer.models.weights.load_model` rebuilds the model from the file). Every converter checks names and
shapes and names what it dropped or could not find.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fastfer.models.convert.common import Conversion, check_against
from fastfer.models.weights import read_state_dict, save_weights
from fastfer.utils.errors import CheckpointError


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    convert: Callable[..., Conversion]  # (path, strict, ir_stages=None) → Conversion


def _apvit(fn_name: str):
    def convert(path, strict: bool = True, ir_stages: Optional[int] = None) -> Conversion:
        from fastfer.models.convert import apvit

        kwargs = {} if ir_stages is None else {"ir_stages": ir_stages}
        return getattr(apvit, fn_name)(read_state_dict(path), strict=strict, **kwargs)

    return convert


def _meta_shapes(name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a registered model's state_dict, built on the meta device (no memory, no init)."""
    import timm

    import fastfer.models  # noqa: F401  (registers the models)

    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fer_former(path, strict: bool = True, ir_stages: Optional[int] = None) -> Conversion:
    return fer_former_conversion(read_state_dict(path), ir_stages)


def fer_former_conversion(state_dict: dict, ir_stages: Optional[int] = None) -> Conversion:
    """An official FER-former state_dict → :class:`Conversion`; complete (rebuildable from the file) when it is
    the paper's configuration, run with ``text_token="cls"`` as released."""
    from fastfer.labels import label_names
    from fastfer.models.convert.fer_former import convert_official

    conv = Conversion({}, "fer-former", architecture="fer_former")
    try:
        conv.state_dict = convert_official(state_dict, num_stages=ir_stages or 3, dropped=conv.dropped)
    except ValueError as err:
        raise CheckpointError(f"fer-former: {err}") from None
    conv.label_names = label_names(conv.state_dict["head.weight"].shape[0])
    # The release feeds token 0 to both heads: text_token="cls" reproduces it.
    kwargs = dict(text_token="cls", num_classes=len(conv.label_names))
    if ir_stages not in (None, 3):
        kwargs["backbone_stages"] = ir_stages
    paper = _meta_shapes("fer_former", **kwargs)  # without a text head: text_proj (the release's fc2) is extra
    dim = paper["cls_token"][-1]
    paper.update({"text_proj.weight": (dim, 512), "text_proj.bias": (dim,)})
    sd = conv.state_dict
    if set(sd) - set(paper) == set() and set(paper) - set(sd) <= {"text_proj.weight", "text_proj.bias"} and all(
            tuple(v.shape) == paper[k] for k, v in sd.items()):
        conv.complete, conv.model_kwargs = True, {k: v for k, v in kwargs.items() if k != "num_classes"}
    else:
        conv.notes.append("not the paper's fer_former configuration: rebuild the model with its own arguments "
                          "(the file holds no model metadata)")
    conv.notes.append("no text_embed (the release stores no CLIP features): build it with "
                      "model.build_text_features(...) or train with --text-encoder")
    return conv


def _convnext_b(path, strict: bool = True, ir_stages: Optional[int] = None) -> Conversion:
    from fastfer.models.convert.conv_cut import convnext_to_convcut

    conv = Conversion({}, "convnext-b", architecture="conv_cut")
    try:
        conv.state_dict = convnext_to_convcut(read_state_dict(path), dropped=conv.dropped)
    except ValueError as err:
        raise CheckpointError(f"convnext-b: {err}") from None
    conv.notes.append("trunk only (base_model.*): pass it to `fastfer train --model conv_cut --init FILE`")
    return conv


def _conv_cut_keras(path, strict: bool = True, ir_stages: Optional[int] = None) -> Conversion:
    from fastfer.labels import EXPRESSIONS
    from fastfer.models.conv_cut import ConvCut
    from fastfer.models.convert.conv_cut_keras import SOURCE, infer_model_kwargs, keras_to_convcut, read_keras_weights

    conv = Conversion({}, SOURCE, architecture="conv_cut", complete=True)
    sd = keras_to_convcut(read_keras_weights(path), strict=strict, dropped=conv.dropped)
    kwargs = infer_model_kwargs(sd)
    with torch.device("meta"):
        target = ConvCut(**kwargs)
    check_against(sd, {k: tuple(v.shape) for k, v in target.state_dict().items()}, SOURCE, True, conv)
    conv.state_dict = sd
    conv.label_names = EXPRESSIONS[:kwargs["num_classes"]]
    defaults = inspect.signature(ConvCut).parameters
    conv.model_kwargs = {k: v for k, v in kwargs.items() if k != "num_classes" and defaults[k].default != v}
    conv.notes.append("attention='keras_batch' (the released head attends across the batch: predictions depend "
                      "on the batch); the released recipe trains with trunk='frozen'")
    return conv


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("apvit-mmcls", "official APViT (mmcls .pth) → complete apvit", _apvit("convert_apvit_mmcls")),
    Source("ir50-evolve", "face.evoLVe IR-50 → APViT extractor.*", _apvit("convert_ir50_evolve")),
    Source("vit-small-v01", "timm v0.1 ViT-S → APViT's ViT part", _apvit("convert_vit_small_v01")),
    Source("fer-former", "official FER-former state_dict → complete fer_former", _fer_former),
    Source("convnext-b", "timm convnext_base → Conv-cut trunk base_model.*", _convnext_b),
    Source("conv-cut-keras", "released Conv-cut Keras .h5 (needs h5py) or .npz dump → complete conv_cut",
           _conv_cut_keras),
)}


def convert_file(source: str, src: str | os.PathLike, dst: str | os.PathLike, strict: bool = True,
                 ir_stages: Optional[int] = None) -> Conversion:
    """Read ``src``, convert it with the ``source`` converter and write ``dst`` as safetensors (with metadata).
    ``ir_stages``: IR-50 stages the target keeps (``ir50-evolve``, ``fer-former``; default 3, the papers')."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {source!r}")
    conv = SOURCES[source].convert(src, strict=strict, ir_stages=ir_stages)
    conv.notes.append(f"converted from {os.path.basename(os.fspath(src))}")
    save_weights(dst, conv.state_dict, metadata=conv.model_metadata(), extra_header=conv.metadata())
    return conv


__all__ = ["Conversion", "SOURCES", "Source", "convert_file"]
