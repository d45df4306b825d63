"""Class-balanced repeat-factor sampling (APViT's ``ClassBalancedDataset(oversample_thr, method)``), DDP-ready.

For single-label data with class frequency ``f(c) = n_c / N``:
- ``method="sqrt"``: ``r(c) = max(1, sqrt(thr / f(c)))`` (APViT RAF-DB: ``thr = 0.15``);
- ``method="reciprocal"``: ``r(c) = max_c' f(c') / f(c)`` (full balance, as in APViT's mmcls fork).
Each image appears ``ceil(r(c))`` times per epoch; the repeated index list is shuffled per epoch with
``seed + epoch`` and, under DDP, padded to a multiple of the world size and sharded by rank like
``torch.utils.data.DistributedSampler``.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def class_repeat_factors(targets: Sequence[int], oversample_thr: float = 0.15,
                         method: str = "sqrt") -> dict[int, float]:
    """``r(c)`` for every class present in ``targets``."""
    if method not in ("sqrt", "reciprocal"):
        raise ValueError(f"method: expected 'sqrt' or 'reciprocal', got {method!r}")
    if method == "sqrt" and not oversample_thr > 0:
        raise ValueError(f"oversample_thr: expected a positive frequency threshold, got {oversample_thr!r}")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size == 0:
        raise ValueError("targets: expected at least one sample, got none")
    classes, counts = np.unique(targets, return_counts=True)
    freq = counts / targets.size
    if method == "sqrt":
        factors = [max(1.0, math.sqrt(oversample_thr / f)) for f in freq]
    else:
        factors = [freq.max() / f for f in freq]
    return {int(c): float(r) for c, r in zip(classes, factors)}


def repeat_indices(targets: Sequence[int], oversample_thr: float = 0.15, method: str = "sqrt") -> np.ndarray:
    """Dataset indices with image ``i`` repeated ``ceil(r(targets[i]))`` times, in index order; int64 [M]."""
    factors = class_repeat_factors(targets, oversample_thr, method)
    # ceil with a tolerance: a factor that is an integer up to rounding (e.g. 2.0000000000000004) repeats 2 times
    reps = np.array([math.ceil(factors[int(t)] - 1e-9) for t in targets], dtype=np.int64)
    return np.repeat(np.arange(len(reps), dtype=np.int64), reps)


class ClassBalancedSampler(Sampler[int]):
    """Yields dataset indices for one epoch (this rank's share).

    Args:
        targets: canonical label of every sample (a reader's ``targets``).
        oversample_thr, method: see the module docstring.
        shuffle: shuffle the repeated list each epoch (``seed + epoch``); else keep index order.
        num_replicas, rank: DDP world size and rank; default from ``torch.distributed`` when initialised, else 1/0.
        drop_last: drop the tail so every rank gets the same count without padding.
    Call :meth:`set_epoch` before each epoch; ``start`` resumes mid-epoch by skipping this rank's first indices.
    """

    def __init__(self, targets: Sequence[int], oversample_thr: float = 0.15, method: str = "sqrt",
                 shuffle: bool = True, seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False):
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (torch.distributed.get_world_size()
                                                                          if dist else 1)
            rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank: expected 0 ≤ rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.indices = repeat_indices(targets, oversample_thr, method)
        self.factors = class_repeat_factors(targets, oversample_thr, method)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.num_replicas, self.rank = num_replicas, rank
        total = len(self.indices)
        self.num_samples = total // num_replicas if drop_last else math.ceil(total / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start: expected 0 ≤ start ≤ {self.num_samples} (samples per rank), got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state.get("start", 0))

    def epoch_indices(self) -> list[int]:
        """This rank's full index list for the current epoch (before ``start`` is applied)."""
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = order[torch.randperm(len(order), generator=g).numpy()]
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > len(order):  # pad by wrapping around so every rank gets num_samples
            pad = self.total_size - len(order)
            order = np.concatenate([order, np.resize(order, pad)])
        return order[self.rank: self.total_size: self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
