"""Inference: the batched :class:`Predictor` (images → detected, aligned faces → expressions), model loading
shared with training (:func:`load_model`), face tracking across frames (:class:`FaceTracker`), live and recorded
streams (:class:`Stream`, :class:`FrameSource`: cameras, URLs, videos), per-item results (:class:`Faces`),
prediction over files and videos (:mod:`.files`) and export to ``torch.export`` / ONNX (:func:`export_model`).
User guide: ``docs/inference.md``.

Submodules load on first use, so ``import fastfer.infer`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Predictor": "fastfer.infer.predictor",
    "ModelInfo": "fastfer.infer.loading",
    "load_model": "fastfer.infer.loading",
    "model_info": "fastfer.infer.loading",
    "FaceTracker": "fastfer.infer.tracking",
    "Faces": "fastfer.infer.results",
    "FrameSource": "fastfer.infer.stream",
    "Stream": "fastfer.infer.stream",
    "StreamError": "fastfer.infer.stream",
    "ExportResult": "fastfer.infer.export",
    "export_model": "fastfer.infer.export",
    "load_exported": "fastfer.infer.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastfer.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
