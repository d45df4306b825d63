"""Confidence calibration: temperature scaling (Guo et al. 2017) and the expected calibration error.

A trained classifier's softmax is usually over-confident: its top probability is higher than its accuracy.
Temperature scaling divides the logits by one scalar T > 0 fitted on held-out (validation) logits to minimise
the negative log-likelihood; the argmax — hence accuracy — does not change, probabilities do.

    T = fit_temperature(val_logits, val_targets)                 # a float; 1 = already calibrated
    ece_before = expected_calibration_error(val_logits.softmax(-1), val_targets)
    ece_after = expected_calibration_error((val_logits / T).softmax(-1), val_targets)
    meta["calibration"] = calibration_record(val_logits, val_targets)   # what a checkpoint stores

Inference reads ``meta["calibration"]["temperature"]`` (:class:`fastfer.infer.loading.ModelInfo`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# the search range of T: beyond it the softmax is one-hot or uniform to float precision anyway
T_MIN, T_MAX = 0.05, 20.0


def _check(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets)
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"logits: expected (N, C) with N ≥ 1 and C ≥ 2, got shape {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets: expected ({logits.shape[0]},) class indices, got shape {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets: expected integer class indices, got {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(f"targets: expected class indices in [0, {logits.shape[1] - 1}], got "
                         f"{int(targets.min())}..{int(targets.max())}")
    logits = logits.detach().double().cpu()
    if not torch.isfinite(logits).all():
        raise ValueError("logits: expected finite values, got NaN or inf")
    return logits, targets.detach().long().cpu()


def nll(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under softmax(logits / T)."""
    logits, targets = _check(logits, targets)
    return float(torch.nn.functional.cross_entropy(logits / temperature, targets))


def fit_temperature(logits: Tensor, targets: Tensor, tol: float = 1e-4) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits (N, C), targets (N,)).

    The NLL is smooth and unimodal in log T, so a golden-section search on log T over [:data:`T_MIN`,
    :data:`T_MAX`] finds the minimum to ``tol`` (relative) in ~60 evaluations of one (N, C) softmax — no
    learning rate, no iteration count to tune, deterministic. A minimum at the edge of the range is returned
    as the edge.
    """
    logits, targets = _check(logits, targets)
    ce = torch.nn.functional.cross_entropy

    def loss(log_t: float) -> float:
        return float(ce(logits / math.exp(log_t), targets))

    a, b = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))


def expected_calibration_error(probs: Tensor, targets: Tensor, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins: Σ_b (n_b / N) · |accuracy_b − mean confidence_b|, the
    confidence being the top probability of each row of ``probs`` (N, C)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected a positive int, got {bins!r}")
    probs, targets = _check(probs, targets)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    # bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 goes to the first bin
    index = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    gap = (acc_sum - conf_sum).abs()  # = n_b · |acc_b − conf_b|
    return float(gap.sum() / len(targets))


def calibration_record(logits: Tensor, targets: Tensor, bins: int = 15, split: Optional[str] = "val") -> dict:
    """What a checkpoint stores as ``meta["calibration"]``: the fitted ``temperature``, NLL and ECE before and
    after on these logits, the sample count, the bin count and the split they came from."""
    temperature = fit_temperature(logits, targets)
    logits, targets = _check(logits, targets)
    return {"method": "temperature", "temperature": round(temperature, 6), "split": split, "samples": len(targets),
            "bins": bins,
            "nll_before": round(nll(logits, targets), 6), "nll_after": round(nll(logits, targets, temperature), 6),
            "ece_before": round(expected_calibration_error(logits.softmax(-1), targets, bins), 6),
            "ece_after": round(expected_calibration_error((logits / temperature).softmax(-1), targets, bins), 6)}
