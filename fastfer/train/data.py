"""From ``--data`` to data loaders: dataset specs, train/val/test splits, transforms, samplers whose every random
choice is a function of ``(seed, epoch, rank, position)``.

Exact resume needs the data stream after a restart to equal the uninterrupted one, whatever the number of loader
workers. So the sampler yields ``(index, sample_seed)`` pairs and :class:`Augmented` seeds the transform of that
sample with ``sample_seed`` (inside a forked RNG, the process's own RNG is untouched); the epoch order comes from
``seed + epoch``; a resumed epoch skips the samples already seen. The loaders get their own ``torch.Generator`` so
creating one never draws from the global RNG.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

DATASETS = ("synthetic", "rafdb", "ferplus", "affectnet", "fer2013", "sfew", "expw", "folder", "list")
# Which native split serves as validation / test (None: hold out cfg.val_fraction of train)
NATIVE_SPLITS = {
    "synthetic": ("val", "test"),
    "rafdb": (None, "test"),
    "ferplus": ("val", "test"),
    "fer2013": ("val", "test"),
    "expw": ("val", "test"),
    "affectnet": (None, "val"),  # the official validation set is the usual test set
    "sfew": (None, "val"),  # SFEW test labels are not public
}
ALIGNMENT = {
    "synthetic": "none: synthetic faces drawn centred (fastfer.data.synthetic)",
    "rafdb": "RAF-DB stock aligned crops (basic/Image/aligned, 100×100)",
    "rafdb:apvit": "face.evoLVe MTCNN 5-point similarity alignment (APViT's Image/aligned_224)",
    "rafdb:original": "none: RAF-DB original images",
}


def parse_data_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"synthetic"`` or ``"NAME:PATH"`` (NAME in :data:`DATASETS`) → ``(name, path)``."""
    name, sep, path = str(spec).partition(":")
    name = name.strip().lower().replace("-", "").replace("_", "")
    name = {"raf": "rafdb", "fer+": "ferplus", "imagefolder": "folder"}.get(name, name)
    if name not in DATASETS:
        raise ValueError(f"data: expected 'synthetic' or NAME:PATH with NAME in {', '.join(DATASETS[1:])}, "
                         f"got {spec!r}")
    if name == "synthetic":
        if path:
            raise ValueError(f"data: 'synthetic' takes no path (set sizes with --set data_kwargs.train_size=N), "
                             f"got {spec!r}")
        return name, None
    if not path:
        raise ValueError(f"data: expected {name}:PATH (the dataset root), got {spec!r}")
    return name, os.path.expanduser(path)


# --- samplers ---------------------------------------------------------------------------------------------------

def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 63-bit seed for one sample of one epoch on one rank (SplitMix-style mixing of the four integers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB + position) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 29
    return x & (2**63 - 1)


class ShuffleSampler(Sampler[int]):
    """Every index once per epoch, shuffled with ``seed + epoch``, padded and sharded like DistributedSampler;
    the interface of :class:`fastfer.data.ClassBalancedSampler` (``set_epoch(epoch, start)``, ``epoch_indices``)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False):
        if n < 1:
            raise ValueError(f"n: expected at least one sample, got {n}")
        self.n, self.shuffle, self.seed, self.drop_last = n, shuffle, int(seed), drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start: expected 0 ≤ start ≤ {self.num_samples}, got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order = order[: self.total_size] if self.drop_last else order + order[: self.total_size - self.n]
        return order[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededSampler(Sampler[tuple]):
    """Wraps a sampler with ``set_epoch(epoch, start)`` / ``epoch_indices()``; yields ``(index, sample_seed)``."""

    def __init__(self, base, seed: int, rank: int = 0):
        self.base, self.seed, self.rank = base, int(seed), rank

    @property
    def num_samples(self) -> int:
        return self.base.num_samples

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch, start)

    def __iter__(self):
        epoch, start = self.base.epoch, self.base.start
        for pos, idx in enumerate(self.base.epoch_indices()[start:], start):
            yield int(idx), sample_seed(self.seed, epoch, self.rank, pos)

    def __len__(self) -> int:
        return len(self.base)


class Augmented(Dataset):
    """``base[i]`` → ``(transform(image), label)``; a key ``(i, seed)`` runs the transform under that seed."""

    def __init__(self, base: Dataset, transform: Optional[Callable]):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.base[index]
        if self.transform is None:
            return img, label
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            state = random.getstate()
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.transform(img), label
            finally:
                random.setstate(state)

    def __getitems__(self, keys: list) -> list:
        """A batch of keys (the DataLoader's batched fetch): in-memory images with a transform that has a batch
        path (``light``) go through it at once; anything else sample by sample."""
        if not self.batches_in_memory:
            return [self[k] for k in keys]
        pairs = [k if isinstance(k, tuple) else (k, None) for k in keys]
        positions, n = [int(i) for i, _ in pairs], len(self.base)
        bad = next((i for i in positions if not -n <= i < n), None)
        if bad is not None:
            raise IndexError(f"index {bad} out of range for a dataset of {n} images")
        x = self.transform.batch(self.base.images[positions], [s for _, s in pairs])
        return list(zip(x.unbind(0), (self.base.targets[i] for i in positions)))

    @property
    def batches_in_memory(self) -> bool:
        """Whether batches come from memory through a batch transform (no loader worker needed)."""
        return getattr(self.transform, "batch", None) is not None and isinstance(self.base, CachedImages)


class CachedImages(Dataset):
    """A dataset materialised once in memory: ``images`` uint8 (N, 3, H, W), ``targets`` (N,)."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int], label_names: Sequence[str], split: str):
        self.images, self.split = images, split
        self.targets = [int(t) for t in targets]
        self.label_names = tuple(label_names)
        self.num_classes = len(self.label_names)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def _free_cores() -> int:
    """Cores this process may use (1 when only one: a worker process would then only add start-up time)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(cores, 8) if cores > 1 else 0


def materialize(dataset: Dataset, workers: int = 0, desc: str = "") -> CachedImages:
    """Decode/draw every sample of an untransformed same-size dataset once (in parallel with ``workers``)."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=64, num_workers=workers, generator=torch.Generator())
    images, targets = [], []
    for x, y in tqdm(loader, desc=desc or "caching", leave=False, unit="batch", dynamic_ncols=True):
        images.append(x)
        targets.append(y)
    return CachedImages(torch.cat(images), torch.cat(targets).tolist(), dataset.label_names,
                        getattr(dataset, "split", ""))


# --- transforms -----------------------------------------------------------------------------------------------------

def light_transforms(size: int, mean, std, train: bool):
    """Demo augmentation (:class:`fastfer.train.light.LightTransform`): random translation by up to size/16 pixels
    (edge padding + crop) and horizontal flip; test: resize. uint8 (3, H, W) in, normalised float32 (3, size,
    size) out, and a batch path for in-memory sets. (A RandomResizedCrop(0.8–1) here slowed the demo's learning:
    84 % instead of ≥ 90 % in the same 24 epochs, one seed.)"""
    from fastfer.train.light import LightTransform

    return LightTransform(size, mean, std, train)


def make_transforms(name: str, size: int, mean, std, train: bool):
    if name == "light":
        return light_transforms(size, mean, std, train)
    from fastfer.data import build_transforms

    return build_transforms(name, train=train, input_size=size)


# --- splits -------------------------------------------------------------------------------------------------------------

@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    label_names: tuple
    alignment: str
    val_from: str  # where validation came from, for the log
    test_from: str


def _reader(name: str, path: str, split: str, kwargs: dict) -> Dataset:
    import fastfer.data as D

    cls = {"rafdb": D.RAFDB, "ferplus": D.FERPlus, "affectnet": D.AffectNet, "fer2013": D.FER2013,
           "sfew": D.SFEW, "expw": D.ExpW, "folder": D.ImageFolderFER}[name]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "root", "split", "transform"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"data_kwargs: the {name} reader takes {', '.join(sorted(accepted))}; got unknown "
                         f"{', '.join(unknown)}")
    if name == "folder":
        root = Path(path)
        sub = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == split] if root.is_dir() else []
        return cls(sub[0] if sub else root, split=split, **kwargs)
    return cls(path, split=split, **kwargs)


def build_splits(spec: str, data_kwargs: dict, val_fraction: float, val_source: str, image_size: int,
                 seed: int, workers: int = 0, num_classes: Optional[int] = None,
                 labels: Optional[Sequence[str]] = None) -> Splits:
    """The untransformed train / val / test datasets of ``spec`` (see :func:`parse_data_spec`). ``labels``: an own
    class set (folder datasets): train reads it, and val/test read the train split's names so a split that lacks
    a class folder keeps the same class indices."""
    from fastfer.data.split import train_val_split

    name, path = parse_data_spec(spec)
    kwargs = dict(data_kwargs or {})
    if labels is not None:
        if name != "folder":
            raise ValueError(f"labels: an own class set needs a folder dataset (--data folder:PATH), got {spec!r}")
        kwargs["labels"] = list(labels)
    if name == "synthetic":
        from fastfer.data import SyntheticExpressions

        sizes = {s: kwargs.pop(f"{s}_size", None) for s in ("train", "val", "test")}
        cache = kwargs.pop("cache", True)
        _check_synthetic_kwargs(kwargs)
        kwargs.setdefault("num_classes", num_classes or 7)
        sets = {s: SyntheticExpressions(s, size=sizes[s], image_size=image_size, **kwargs)
                for s in ("train", "val", "test")}
        if cache:  # drawn before training starts, so every core is free for it (not only the loader's workers)
            draw = max(workers, _free_cores())
            sets = {s: materialize(d, draw, f"drawing synthetic {s}") for s, d in sets.items()}
        if val_source == "test":
            val, val_from = sets["test"], "synthetic test split (validation = test)"
        else:
            val, val_from = sets["val"], "synthetic val split"
        return Splits(sets["train"], val, sets["test"], tuple(sets["train"].label_names), ALIGNMENT["synthetic"],
                      val_from, "synthetic test split")
    if name == "list":
        return _list_splits(path, kwargs, val_fraction, val_source, seed)
    if name == "folder":
        root = Path(path)
        subs = {p.name.lower() for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
        has = {s: s in subs for s in ("train", "val", "test")}
        if not has["train"]:
            raise FileNotFoundError(f"data folder:{path}: expected train/ (and test/, optionally val/) sub-folders "
                                    f"of class folders")
        native = ("val" if has["val"] else None, "test" if has["test"] else ("val" if has["val"] else None))
    else:
        native = NATIVE_SPLITS[name]
    train = _reader(name, path, "train", kwargs)
    if native[1] is None:
        raise FileNotFoundError(f"data {spec}: no test split found")
    if getattr(train, "own_labels", False):
        kwargs = {**kwargs, "labels": list(train.label_names)}
    train_kwargs, kwargs = kwargs, _eval_kwargs(name, kwargs)
    test = _reader(name, path, native[1], kwargs)
    if val_source == "test":
        val, val_from = test, f"{native[1]} split (the papers' protocol: validation = test)"
    elif native[0] is not None and native[0] != native[1]:
        val, val_from = _reader(name, path, native[0], kwargs), f"{native[0]} split"
    else:
        if train_kwargs != kwargs:  # soft-label train reader: hold out from a majority-label copy of it
            _, val = train_val_split(_reader(name, path, "train", kwargs), val_fraction, seed=seed)
            train, _ = train_val_split(train, val_fraction, seed=seed)
        else:
            train, val = train_val_split(train, val_fraction, seed=seed)
        val_from = f"{val_fraction:.0%} of train held out (seed {seed})"
    key = f"{name}:{kwargs.get('images')}" if name == "rafdb" and kwargs.get("images") in ("apvit", "original") \
        else name
    alignment = ALIGNMENT.get(key, f"as provided by the dataset ({name})")
    return Splits(train, val, test, tuple(train.label_names), alignment, val_from, f"{native[1]} split")


def _check_synthetic_kwargs(kwargs: dict) -> None:
    import inspect

    from fastfer.data import SyntheticExpressions

    accepted = set(inspect.signature(SyntheticExpressions.__init__).parameters) - {"self", "split", "size",
                                                                                    "image_size", "transform"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"data_kwargs: the synthetic set takes train_size, val_size, test_size, cache, "
                         f"{', '.join(sorted(accepted))}; got unknown {', '.join(unknown)}")


def _eval_kwargs(name: str, kwargs: dict) -> dict:
    """Reader arguments for validation / test: FERPlus soft-label modes train only; its papers evaluate on the
    majority label."""
    if name == "ferplus" and kwargs.get("label_mode", "majority") != "majority":
        return {**kwargs, "label_mode": "majority"}
    return kwargs


def _list_splits(train_list: str, kwargs: dict, val_fraction: float, val_source: str, seed: int) -> Splits:
    """``list:TRAIN_LIST`` with ``data_kwargs`` ``test_list`` (required), ``val_list``, ``root``, ``num_classes``,
    ``strict`` (FER-former's ``path  text_label  int_label`` lists; :class:`fastfer.data.LabelList`)."""
    from fastfer.data import LabelList
    from fastfer.data.split import train_val_split

    kwargs = dict(kwargs)
    test_list, val_list = kwargs.pop("test_list", None), kwargs.pop("val_list", None)
    allowed = {"root", "num_classes", "strict"}
    if set(kwargs) - allowed:
        raise ValueError(f"data_kwargs: a list dataset takes test_list, val_list, {', '.join(sorted(allowed))}; "
                         f"got unknown {', '.join(sorted(set(kwargs) - allowed))}")
    if not test_list:
        raise ValueError("data list:TRAIN_LIST: also name the test list with --set data_kwargs.test_list=PATH")
    train = LabelList(train_list, split="train", **kwargs)
    kwargs.setdefault("num_classes", train.num_classes)  # the same label set for every split
    test = LabelList(os.path.expanduser(test_list), split="test", **kwargs)
    if val_source == "test":
        val, val_from = test, "test list (the papers' protocol: validation = test)"
    elif val_list:
        val, val_from = LabelList(os.path.expanduser(val_list), split="val", **kwargs), "val list"
    else:
        train, val = train_val_split(train, val_fraction, seed=seed)
        val_from = f"{val_fraction:.0%} of the train list held out (seed {seed})"
    return Splits(train, val, test, tuple(test.label_names), "as provided by the list's images", val_from,
                  "test list")


# --- loaders ------------------------------------------------------------------------------------------------------

def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def train_loader(dataset: Augmented, sampler: SeededSampler, batch_size: int, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """Batches of ``batch_size`` in sampler order (the last incomplete batch is dropped)."""
    return DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size, drop_last=True), num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator(), worker_init_fn=_worker_init,
                      persistent_workers=workers > 0)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> DataLoader:
    """This rank's strided share of ``dataset`` in order, without padding (results are gathered afterwards)."""
    from torch.utils.data import Subset

    part = Subset(dataset, list(range(rank, len(dataset), world_size))) if world_size > 1 else dataset
    return DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator(), worker_init_fn=_worker_init)


def targets_of(dataset: Dataset) -> list[int]:
    base = dataset.base if isinstance(dataset, Augmented) else dataset
    if not hasattr(base, "targets"):
        raise TypeError(f"dataset: expected a reader with 'targets', got {type(base).__name__}")
    return list(base.targets)


def make_sampler(kind: str, targets: Sequence[int], seed: int, rank: int, world_size: int, oversample_thr: float,
                 oversample_method: str) -> SeededSampler:
    if kind == "class_balanced":
        from fastfer.data import ClassBalancedSampler

        base = ClassBalancedSampler(targets, oversample_thr, oversample_method, shuffle=True, seed=seed,
                                    num_replicas=world_size, rank=rank)
    else:
        base = ShuffleSampler(len(targets), shuffle=True, seed=seed, num_replicas=world_size, rank=rank)
    return SeededSampler(base, seed, rank)


def describe_counts(targets: Sequence[int], label_names: Sequence[str]) -> str:
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(label_names))
    return ", ".join(f"{n} {c}" for n, c in zip(label_names, counts.tolist()))


def build_eval_split(spec: str, split: str, data_kwargs: dict, image_size: int, workers: int = 0,
                     num_classes: Optional[int] = None) -> tuple[Dataset, str]:
    """One untransformed split for evaluation: ``split`` is ``test`` (the dataset's test split as training uses
    it), ``val`` (its native validation split) or ``train``. Returns ``(dataset, alignment)``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: expected train, val or test, got {split!r}")
    name, path = parse_data_spec(spec)
    kwargs = dict(data_kwargs or {})
    if name == "synthetic":
        from fastfer.data import SyntheticExpressions

        size = kwargs.pop(f"{split}_size", None)
        for s in ("train", "val", "test"):
            kwargs.pop(f"{s}_size", None)
        kwargs.pop("cache", None)
        _check_synthetic_kwargs(kwargs)
        kwargs.setdefault("num_classes", num_classes or 7)
        ds = SyntheticExpressions(split, size=size, image_size=image_size, **kwargs)
        return materialize(ds, workers, f"drawing synthetic {split}"), ALIGNMENT["synthetic"]
    if num_classes is not None and name in ("ferplus", "affectnet", "list"):
        kwargs.setdefault("num_classes", num_classes)
    kwargs = _eval_kwargs(name, kwargs)
    if name == "list":  # the list named is the split to evaluate (or data_kwargs.test_list / val_list)
        from fastfer.data import LabelList

        listed = {"test": kwargs.pop("test_list", None), "val": kwargs.pop("val_list", None)}.get(split)
        return LabelList(os.path.expanduser(listed or path), split=split, **kwargs), "as provided by the list's images"
    if name == "folder":
        native = split
    else:
        val_split, test_split = NATIVE_SPLITS[name]
        native = {"train": "train", "val": val_split, "test": test_split}[split]
        if native is None:
            raise ValueError(f"split: {name} has no native validation split (training holds one out of train); "
                             f"evaluate --split test")
    key = f"{name}:{kwargs.get('images')}" if name == "rafdb" and kwargs.get("images") in ("apvit", "original") \
        else name
    return _reader(name, path, native, kwargs), ALIGNMENT.get(key, f"as provided by the dataset ({name})")
