"""Export a model to a ``torch.export`` program (``.pt2``) or ONNX, with the fused ops lowered to plain ATen.

    from fastfer.infer import export_model
    result = export_model("run/model.safetensors", "apvit.onnx", format="onnx")
    result.max_abs_diff   # exported vs PyTorch logits on a fresh batch

The pooled models keep their static k / keep counts (APP's K, each ATP block's keep): those are Python ints, so
the graph has no data-dependent shapes. The batch axis is dynamic unless ``dynamic_batch=False``. The
custom ops are replaced by their reference decomposition (:mod:`fastfer.ops.lowering`), so the program runs
without fastfer and ONNX needs no custom operators. Input: normalised faces ``images`` (B, 3, H, W) float32;
output: ``logits`` (B, num_classes). The label names and preprocessing travel with the file (ONNX
``metadata_props``; ``fastfer.json`` in the ``.pt2``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from fastfer import ops
from fastfer.infer.loading import ModelInfo, load_model
from fastfer.utils.files import atomic_write

FORMATS = ("onnx", "torch-export")
MAX_BATCH = 4096


@dataclass
class ExportResult:
    """Where the export went and how it compared with PyTorch (``verified_with``: ``onnxruntime``,
    ``torch.export`` or None when verification was skipped or onnxruntime is absent)."""

    path: str
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    verified_with: Optional[str]
    max_abs_diff: Optional[float]
    info: ModelInfo


def metadata(info: ModelInfo) -> dict[str, str]:
    """String metadata written into exported files: model name, label order and preprocessing."""
    return {
        "fastfer.model_name": str(info.model_name),
        "fastfer.label_names": json.dumps(list(info.label_names)),
        "fastfer.input_size": json.dumps(list(info.input_size)),
        "fastfer.mean": json.dumps(list(info.mean)),
        "fastfer.std": json.dumps(list(info.std)),
        "fastfer.input": "images: (B, 3, H, W) float32 RGB, (x/255 - mean) / std",
    }


def export_program(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
                   portable: bool = False) -> "torch.export.ExportedProgram":
    """``torch.export`` of ``model`` on ``example`` (B, 3, H, W) with the fused ops decomposed to ATen."""
    from fastfer.ops.lowering import custom_op_nodes, decompose, reference_ops

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
    with torch.no_grad(), reference_ops(portable):
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    if custom_op_nodes(program):  # a model that calls the ops by another route: rewrite the nodes (slower)
        program = decompose(program, portable=portable)
    left = custom_op_nodes(program)
    if left:
        raise RuntimeError(f"export: fastfer custom ops left after decomposition: {sorted(set(left))}")
    return program


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401 — the dynamo ONNX exporter needs onnx + onnxscript
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError("format='onnx' needs onnx and onnxscript: pip install 'fastfer[onnx]' "
                          "(onnx, onnxscript, onnxruntime)") from exc


def _save_onnx(program, example: torch.Tensor, path: str, opset: Optional[int], meta: dict[str, str]) -> None:
    kwargs = {} if opset is None else {"opset_version": opset}
    onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=["images"],
                                     output_names=["logits"], verbose=False, **kwargs)
    for key, value in meta.items():
        onnx_program.model.metadata_props[key] = value
    onnx_program.save(path)


def _verify(program, path: str, fmt: str, model: torch.nn.Module, x: torch.Tensor) -> tuple[Optional[str], float]:
    """Max |exported − PyTorch| logits on x; ONNX files run in onnxruntime when it is installed, else the
    decomposed program runs in PyTorch."""
    with torch.no_grad():
        expected = model(x).float()
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
            return "onnxruntime", float((got - expected).abs().max())
    with torch.no_grad():
        got = program.module()(x).float()
    return "torch.export", float((got - expected).abs().max())


def export_model(model, path, format: str = "onnx", batch: int = 1, dynamic_batch: bool = True,
                 opset: Optional[int] = None, verify: bool = True, atol: float = 1e-3,
                 model_name: Optional[str] = None, seed: int = 0) -> ExportResult:
    """Export ``model`` (an ``nn.Module`` or a checkpoint file / run folder) to ``path``.

    Args:
        format: ``onnx`` or ``torch-export`` (a ``torch.export.save`` ``.pt2`` archive).
        batch: example batch size; the exported batch is fixed to it when ``dynamic_batch`` is False.
        dynamic_batch: export a dynamic batch axis (1..4096).
        opset: ONNX opset (default: the exporter's).
        verify: run the exported file (onnxruntime when installed, else the decomposed program) on a fresh
            random batch and compare its logits with the eager model; raise when they differ by more than atol.
        model_name: for checkpoints without metadata.

    The model runs on the CPU in fp32 with the ``torch`` op backend while exporting and verifying.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch: expected an int in 1..{MAX_BATCH}, got {batch!r}")
    if format == "onnx":
        _require_onnx()
    path = os.fspath(path)
    is_module = isinstance(model, torch.nn.Module)
    net, info = load_model(model, model_name=model_name)
    net = _cpu_fp32_copy(net) if is_module else net.float().cpu()
    net.eval()
    with ops.use_backend("torch"):
        return _export(net, info, path, format, batch, dynamic_batch, opset, verify, atol, seed)


def _export(net, info: ModelInfo, path: str, format: str, batch: int, dynamic_batch: bool, opset: Optional[int],
            verify: bool, atol: float, seed: int) -> ExportResult:
    gen = torch.Generator().manual_seed(seed)
    trace_batch = max(batch, 2) if dynamic_batch else batch  # a size-1 example would specialise the batch axis
    example = torch.randn(trace_batch, 3, *info.input_size, generator=gen)
    program = export_program(net, example, dynamic_batch, portable=(format == "onnx"))
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    meta = metadata(info)
    # Through a temporary file in the same folder: a failure (a full disk …) leaves any file already at `path`.
    if format == "onnx":
        atomic_write(path, lambda tmp: _save_onnx(program, example, tmp, opset, meta))
    else:
        atomic_write(path, lambda tmp: torch.export.save(program, tmp, extra_files={"fastfer.json": json.dumps(meta)}))
    verified, diff = None, None
    if verify:
        check_batch = batch + 1 if dynamic_batch else batch
        x = torch.randn(check_batch, 3, *info.input_size, generator=gen)
        verified, diff = _verify(program, path, format, net, x)
        if not diff <= atol:
            raise RuntimeError(f"export: {verified} logits differ from PyTorch by {diff:.3g} (> atol={atol}); "
                               f"the file was written to {path!r}")
    return ExportResult(path, format, tuple(example.shape[1:]), dynamic_batch, verified, diff, info)


def _cpu_fp32_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU fp32 copy of a user's model (the caller's model is left untouched)."""
    import copy

    return copy.deepcopy(model).float().cpu()


def load_exported(path) -> tuple["torch.export.ExportedProgram", dict]:
    """A ``.pt2`` written by :func:`export_model` → (program, metadata dict)."""
    extra = {"fastfer.json": ""}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    return program, json.loads(extra["fastfer.json"] or "{}")
