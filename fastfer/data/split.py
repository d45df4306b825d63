"""Seeded validation split taken from a training set (RAF-DB, ExpW … have no validation split).

Stratified by class so that every class is represented in proportion; the same (targets, fraction, seed) always
gives the same indices, independent of torch's global RNG.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset


def split_indices(targets: Sequence[int], val_fraction: float, seed: int = 0,
                  stratified: bool = True) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)``: about ``val_fraction`` of each class goes to val (at least one sample of a class
    with ≥ 2 samples). Both lists are sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected 0 < val_fraction < 1, got {val_fraction!r}")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size < 2:
        raise ValueError(f"targets: expected at least 2 samples to split, got {targets.size}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(targets == c) for c in np.unique(targets)] if stratified else [np.arange(targets.size)]
    val = []
    for idx in groups:
        n_val = int(round(val_fraction * idx.size))
        if idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        val.extend(rng.permutation(idx)[:n_val].tolist())
    val_set = set(val)
    return [i for i in range(targets.size) if i not in val_set], sorted(val)


class LabelledSubset(Subset):
    """A ``Subset`` that keeps the reader's label metadata (``targets``, ``label_names``, …)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], split: str):
        super().__init__(dataset, list(indices))
        self.split = split
        all_targets = dataset.targets
        self.targets = [all_targets[i] for i in self.indices]
        for attr in ("label_names", "native_names", "native_to_canonical", "num_classes"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def summary(self) -> dict:
        base = self.dataset.summary() if hasattr(self.dataset, "summary") else {}
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=getattr(self, "num_classes", 0))
        names = getattr(self, "label_names", range(len(counts)))
        return {**base, "split": self.split, "kept": len(self), "class_counts": dict(zip(names, counts.tolist()))}


def train_val_split(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0,
                    stratified: bool = True) -> tuple[LabelledSubset, LabelledSubset]:
    """Split a reader (anything with ``targets``) into seeded ``(train, val)`` subsets.

    The split depends only on ``targets``, ``val_fraction`` and ``seed``: to give train and val different
    transforms, build the reader twice (one per transform) and split both with the same seed.
    """
    if not hasattr(dataset, "targets"):
        raise TypeError(f"dataset: expected a reader with a 'targets' list, got {type(dataset).__name__}")
    train_idx, val_idx = split_indices(dataset.targets, val_fraction, seed, stratified)
    return LabelledSubset(dataset, train_idx, "train"), LabelledSubset(dataset, val_idx, "val")
