"""Converters from published checkpoints to fastfer state_dicts, every one reachable from ``fastfer convert``.

| ``--from`` | input | output |
|---|---|---|
| ``apvit-mmcls`` | official APViT release (mmcls ``.pth``) | complete ``apvit`` state_dict, head rows canonical |
| ``ir50-evolve`` | face.evoLVe IR-50 backbone | ``extractor.*`` of APViT (stages 1–3) |
| ``vit-small-v01`` | timm v0.1 ``vit_small_p16_224`` | APViT's ViT part (tokens, pos-embeds, blocks, norm) |
| ``fer-former`` | official FER-former ``ModelClassifier`` state_dict | complete ``fer_former`` state_dict |
| ``convnext-b`` | timm ``convnext_base`` state_dict | Conv-cut trunk ``base_model.*`` |
| ``conv-cut-keras`` | released Conv-cut Keras ``.h5`` (needs h5py) | Conv-cut head (+ trunk) tensors |

:func:`convert_file` reads a file, converts it and writes safetensors with metadata naming the architecture and
the label names. Every converter checks names and shapes and names what it dropped or could not find.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from fastfer.models.convert.common import Conversion
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


def _fer_former(path, strict: bool = True, ir_stages: Optional[int] = None) -> Conversion:
    from fastfer.labels import label_names
    from fastfer.models.convert.fer_former import convert_official

    conv = Conversion({}, "fer-former", architecture="fer_former")
    try:
        conv.state_dict = convert_official(read_state_dict(path), num_stages=ir_stages or 3, dropped=conv.dropped)
    except ValueError as err:
        raise CheckpointError(f"fer-former: {err}") from None
    conv.label_names = label_names(conv.state_dict["head.weight"].shape[0])
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
    from fastfer.models.convert.conv_cut import keras_head_to_convcut, read_keras_h5

    conv = Conversion({}, "conv-cut-keras", architecture="conv_cut")
    try:
        conv.state_dict = keras_head_to_convcut(read_keras_h5(os.fspath(path)))
    except ValueError as err:
        raise CheckpointError(f"conv-cut-keras: {err}") from None
    return conv


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("apvit-mmcls", "official APViT (mmcls .pth) → complete apvit", _apvit("convert_apvit_mmcls")),
    Source("ir50-evolve", "face.evoLVe IR-50 → APViT extractor.*", _apvit("convert_ir50_evolve")),
    Source("vit-small-v01", "timm v0.1 ViT-S → APViT's ViT part", _apvit("convert_vit_small_v01")),
    Source("fer-former", "official FER-former state_dict → complete fer_former", _fer_former),
    Source("convnext-b", "timm convnext_base → Conv-cut trunk base_model.*", _convnext_b),
    Source("conv-cut-keras", "released Conv-cut Keras .h5 → Conv-cut tensors (needs h5py)", _conv_cut_keras),
)}


def convert_file(source: str, src: str | os.PathLike, dst: str | os.PathLike, strict: bool = True,
                 ir_stages: Optional[int] = None) -> Conversion:
    """Read ``src``, convert it with the ``source`` converter and write ``dst`` as safetensors (with metadata).
    ``ir_stages``: IR-50 stages the target keeps (``ir50-evolve``, ``fer-former``; default 3, the papers')."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {source!r}")
    conv = SOURCES[source].convert(src, strict=strict, ir_stages=ir_stages)
    conv.notes.append(f"converted from {os.path.basename(os.fspath(src))}")
    save_weights(dst, conv.state_dict, extra_header=conv.metadata())
    return conv


__all__ = ["Conversion", "SOURCES", "Source", "convert_file"]
