"""Classification metrics from predictions: accuracy, mean class accuracy, macro F1, confusion matrix, per-class
report. Everything is computed from the confusion matrix, so the numbers agree with each other exactly.

Conventions: ``cm[i, j]`` = samples of true class ``i`` predicted as ``j`` (rows true, columns predicted).
Classes without a true sample are left out of the mean class accuracy (their recall is undefined); a class's F1
is 0 when its precision and recall are both 0 or undefined, and every class of the label set counts in the
macro F1 (sklearn's ``f1_score(average="macro", labels=range(C), zero_division=0)``).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np


def confusion_matrix(targets, preds, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts from ``targets`` (N,) and ``preds`` (N,) class indices (lists, arrays or tensors)."""
    t = _as_index_array(targets, "targets")
    p = _as_index_array(preds, "preds")
    if t.shape != p.shape:
        raise ValueError(f"preds: expected the shape of targets {t.shape}, got {p.shape}")
    for name, a in (("targets", t), ("preds", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name}: expected class indices in 0..{num_classes - 1}, got values in "
                             f"{a.min()}..{a.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _as_index_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected a 1-D array of integer class indices, got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a.astype(np.int64)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``support``, ``precision``, ``recall``, ``f1`` (C,) from a confusion matrix; undefined → 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"support": support.astype(np.int64), "precision": precision, "recall": recall, "f1": f1}


def summarize(cm: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``mean_class_accuracy`` (mean recall over classes present), ``macro_f1``, ``n``."""
    cm = np.asarray(cm)
    n = int(cm.sum())
    pc = per_class(cm)
    present = pc["support"] > 0
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "mean_class_accuracy": float(pc["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(pc["f1"].mean()) if cm.shape[0] else 0.0,
        "n": n,
    }


def classification_report(cm: np.ndarray, label_names: Sequence[str]) -> dict:
    """JSON-ready report: the summary, the confusion matrix and one entry per class."""
    cm = np.asarray(cm)
    if len(label_names) != cm.shape[0]:
        raise ValueError(f"label_names: expected {cm.shape[0]} names (confusion matrix size), got "
                         f"{len(label_names)}")
    pc = per_class(cm)
    classes = {
        name: {"support": int(pc["support"][i]), "precision": float(pc["precision"][i]),
               "recall": float(pc["recall"][i]), "f1": float(pc["f1"][i])}
        for i, name in enumerate(label_names)
    }
    return {**summarize(cm), "label_names": list(label_names), "confusion_matrix": cm.astype(int).tolist(),
            "per_class": classes}


def format_report(report: dict) -> str:
    """Plain-text table of :func:`classification_report` for the terminal."""
    lines = [f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for name, r in report["per_class"].items():
        lines.append(f"{name:<12} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} {r['support']:>8d}")
    lines.append(f"accuracy {report['accuracy']:.4f}  mean class accuracy {report['mean_class_accuracy']:.4f}  "
                 f"macro F1 {report['macro_f1']:.4f}  (n={report['n']})")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | os.PathLike, prefix: str = "test", png: bool = True,
                 title: Optional[str] = None) -> list[str]:
    """Write ``{prefix}_report.json`` (summary, confusion matrix, per class) and, with ``png``,
    ``{prefix}_confusion_matrix.png`` through :func:`fastfer.viz.plot_confusion_matrix`. Returns the paths."""
    from fastfer.train.checkpoint import atomic_write_text

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{prefix}_report.json")]
    atomic_write_text(paths[0], json.dumps(report, indent=2) + "\n")
    if png:
        from fastfer.viz import plot_confusion_matrix

        paths.append(plot_confusion_matrix(np.asarray(report["confusion_matrix"]), report["label_names"],
                                           os.path.join(out_dir, f"{prefix}_confusion_matrix.png"),
                                           normalize=True, title=title))
    return paths
