"""Evaluation shared by training (every epoch, then the test split) and ``fastfer eval``: predictions gathered over
ranks, loss, metrics."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastfer.train import distributed as dist_utils
from fastfer.utils.errors import FastferError
from fastfer.train.metrics import classification_report, confusion_matrix, summarize


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype`` (bf16 / fp16), or a no-op context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                   channels_last: bool = False, outputs: Optional[Callable] = None) -> dict[str, torch.Tensor]:
    """Run ``model`` (eval mode) over ``loader`` (this rank's share) and gather over ranks.

    ``outputs(model, x) → {"logits": (B, C), …}`` names the heads to score (a task's ``eval_outputs``; default
    the model's logits). Returns ``targets`` (N,) and every head (N, C) float32, e.g. FER-former's
    ``text_logits``. Rows are in rank-strided order (the same order for every key).
    """
    outputs = outputs or (lambda m, inp: {"logits": m(inp)})
    was_training = model.training
    model.eval()
    outs: dict[str, list] = {"targets": []}
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            for key, value in outputs(model, x).items():
                outs.setdefault(key, []).append(value.float().cpu())
        outs["targets"].append(torch.as_tensor(y).cpu())
    model.train(was_training)
    result = {}
    for k, parts in outs.items():
        if not parts:
            continue
        local = torch.cat(parts)
        if dist_utils.env_info().enabled:
            flat = dist_utils.all_gather_cat(local.reshape(-1))
            local = flat.reshape(-1, *local.shape[1:]) if local.dim() > 1 else flat
        result[k] = local
    return result


def metrics_from_predictions(pred: dict[str, torch.Tensor], num_classes: int, prefix: str = "val") -> dict:
    """Loss, accuracy, mean class accuracy, macro F1 (label head); text-head and fused accuracy for FER-former
    (fused = argmax of the mean of both softmaxes, D6)."""
    y, logits = pred["targets"].long(), pred["logits"]
    cm = confusion_matrix(y, logits.argmax(1), num_classes)
    s = summarize(cm)
    out = {f"{prefix}_loss": float(F.cross_entropy(logits, y)) if len(y) else float("nan"),
           f"{prefix}_accuracy": s["accuracy"], f"{prefix}_mean_class_accuracy": s["mean_class_accuracy"],
           f"{prefix}_macro_f1": s["macro_f1"]}
    if "text_logits" in pred:
        tl = pred["text_logits"]
        fused = (logits.softmax(1) + tl.softmax(1)) / 2
        out[f"{prefix}_text_accuracy"] = float((tl.argmax(1) == y).float().mean())
        out[f"{prefix}_fused_accuracy"] = float((fused.argmax(1) == y).float().mean())
    return out


def report_from_predictions(pred: dict[str, torch.Tensor], label_names) -> dict:
    """Full report (summary, confusion matrix, per class) of the label head, plus FER-former's other heads."""
    y = pred["targets"].long()
    cm = confusion_matrix(y, pred["logits"].argmax(1), len(label_names))
    report = classification_report(cm, label_names)
    extra = metrics_from_predictions(pred, len(label_names), prefix="x")
    report["loss"] = extra["x_loss"]
    for k in ("text_accuracy", "fused_accuracy"):
        if f"x_{k}" in extra:
            report[k] = extra[f"x_{k}"]
    return report


class NonFiniteOutputError(FastferError, ValueError):
    """A model produced NaN/inf outputs: no metric is computed from them."""


def check_finite(pred: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to score non-finite outputs (an accuracy from NaN logits is a number that means nothing)."""
    for key, value in pred.items():
        if key == "targets" or not value.is_floating_point():
            continue
        bad = ~torch.isfinite(value).all(dim=-1) if value.dim() > 1 else ~torch.isfinite(value)
        if bool(bad.any()):
            rows = bad.nonzero().flatten()[:5].tolist()
            raise NonFiniteOutputError(f"{what}: the model's {key} are not finite for {int(bad.sum())} of "
                                       f"{len(value)} images (first rows {rows}); no accuracy is reported — check "
                                       f"the checkpoint's weights")


def evaluate_checkpoint(checkpoint, data: Optional[str] = None, split: str = "test", data_kwargs: Optional[dict] = None,
                        batch_size: int = 128, amp: str = "auto", device: str = "auto", workers: Optional[int] = None,
                        threads: Optional[int] = None, out_dir=None) -> tuple[dict, list[str], list[str]]:
    """Evaluate a trained checkpoint on a dataset split (the checkpoint's own dataset unless ``data``).

    Returns ``(report, written paths, notes)``; report holds the metrics plus ``checkpoint``, ``data``, ``split``,
    ``model`` and ``eval_time_s``. Raises ValueError when the dataset's classes differ from the checkpoint's.
    """
    import time
    from pathlib import Path

    from fastfer.models.weights import load_model
    from fastfer.train.data import Augmented, build_eval_split, eval_loader, make_transforms
    from fastfer.train.metrics import write_report
    from fastfer.train.runtime import amp_dtype, default_run_dir, pick_device, pick_threads, pick_workers

    dev = pick_device(device)
    torch.set_num_threads(pick_threads(threads, dev))
    model, meta = load_model(checkpoint)
    model.to(dev)
    pre = meta.get("preprocessing", {})
    size = int(pre.get("input_size", [3, 112, 112])[-1])
    spec = data or meta.get("data")
    if not spec:
        raise ValueError("data: required (the checkpoint does not name its dataset)")
    if data is None:  # the run's own data: its reader options (synthetic sizes, seed, difficulty …) first
        data_kwargs = {**(meta.get("data_kwargs") or {}), **(data_kwargs or {})}
    n_workers = pick_workers(workers, dev)
    dataset, alignment = build_eval_split(spec, split, dict(data_kwargs or {}), size, n_workers,
                                          num_classes=meta["num_classes"])
    names = list(meta["label_names"])
    if list(dataset.label_names) != names:
        raise ValueError(f"data: the dataset's classes {list(dataset.label_names)} differ from the checkpoint's "
                         f"{names}; pass reader options (e.g. --set data_kwargs.num_classes={len(names)})")
    notes = []
    if pre.get("alignment") and pre["alignment"] != alignment:
        notes.append(f"the checkpoint was trained on faces with alignment '{pre['alignment']}', this data has "
                     f"'{alignment}'")
    tf = make_transforms(pre.get("test_transform", "light"), size, pre.get("mean"), pre.get("std"), train=False)
    loader = eval_loader(Augmented(dataset, tf), batch_size, n_workers)
    from fastfer.train.recipes import task_class

    t0 = time.perf_counter()
    pred = predict_loader(model, loader, dev, amp_dtype(amp, dev), outputs=task_class(meta["model"]).eval_outputs)
    check_finite(pred, f"{meta['model']} ({checkpoint}) on {spec} [{split}]")
    report = report_from_predictions(pred, names)
    report.update(checkpoint=str(checkpoint), data=spec, split=split, model=meta["model"],
                  eval_time_s=time.perf_counter() - t0)
    out = Path(out_dir) if out_dir else default_run_dir("eval-")
    paths = write_report(report, out, prefix=split,
                         title=f"{meta['model']} on {spec} {split} — accuracy {report['accuracy']:.1%}")
    return report, [str(p) for p in paths], notes


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised (B, 3, H, W) → RGB in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float().cpu() * s + m).clamp(0, 1)
