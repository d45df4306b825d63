"""What every dataset reader shares: errors, path checks, image decoding, the corrupt-image policy, the summary.

Reader contract (``docs/datasets.md`` §9): ``dataset[i]`` returns ``(image, label)`` where ``image`` is an RGB
``uint8 [3, H, W]`` tensor (or ``transform(image)``) and ``label`` is the canonical index
(``fastfer.labels.EXPRESSIONS`` order). Each reader exposes ``native_names`` (its own class order),
``label_names`` (canonical names of the label set), ``native_to_canonical`` (native id → canonical index, −1 =
dropped), ``targets`` and :meth:`FERDataset.summary` (kept / dropped-by-reason / corrupt counts).

Images are decoded with OpenCV (``cv2.imdecode``; BGR → RGB) everywhere.

Corrupt or missing image files: by default the sample is replaced by the next decodable one, with one warning
per file and a count in ``summary()["corrupt"]`` (counted per process: each DataLoader worker keeps its own
count). ``strict=True`` raises :class:`CorruptImageError` naming the file instead. :meth:`FERDataset.verify`
decodes every image once and removes the bad ones up front.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fastfer.labels import UnknownLabelError, canonical_index, label_names, normalize_name
from fastfer.utils.errors import FastferError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

__all__ = ["IMG_EXTENSIONS", "CorruptImageError", "DatasetFormatError", "EmptySplitError", "FERDataset",
           "UnknownLabelError", "read_image", "require_dir", "require_file"]


class DatasetFormatError(FastferError, ValueError):
    """A label file line (or CSV row) that does not follow the dataset's format; names the file and line."""

    def __init__(self, path: str | os.PathLike, line: int, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}, line {line}: {message}")


class EmptySplitError(FastferError, ValueError):
    """A split that holds no sample after reading and dropping."""


class CorruptImageError(OSError):
    """An image file that is missing or cannot be decoded; names the file."""


def _hashable(key: object) -> object:
    return key if not isinstance(key, list) else tuple(key)


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {path}, found "
                                f"{'a directory' if path.is_dir() else 'nothing'}")
    return path


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory at {path}, found "
                                f"{'a file' if path.exists() else 'nothing'}")
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB ``uint8 [H, W, 3]`` (gray images are expanded, alpha is dropped)."""
    import cv2

    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)  # fromfile + imdecode: non-ASCII paths work
    except OSError as e:
        raise CorruptImageError(f"cannot read image {path}: {e.strerror or e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise CorruptImageError(f"cannot decode image {path} ({data.size} bytes): not an image OpenCV can read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_chw_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB ``[H, W, 3]`` (or gray ``[H, W]``) uint8 array → ``uint8 [3, H, W]`` tensor."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    # transpose in numpy: a torch .contiguous() of this size runs on the intra-op thread pool, which costs more
    # than the copy itself when DataLoader-less code shares a busy CPU
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class FERDataset(Dataset):
    """Base reader. Subclasses fill ``self.samples`` (list of ``(key, canonical_label)``) through
    :meth:`_add` / :meth:`_drop`, then call :meth:`_finish`, and implement :meth:`load` (key → RGB array)."""

    dataset_name = "dataset"

    def __init__(self, native_names: Sequence[str], num_classes: int, *, split: str,
                 transform: Callable | None = None, strict: bool = False, source: str = ""):
        self.native_names = tuple(native_names)
        self.num_classes = num_classes
        self.label_names = label_names(num_classes)
        self.native_to_canonical = tuple(-1 if (c := canonical_index(n, num_classes)) is None else c
                                         for n in self.native_names)
        self.split, self.transform, self.strict, self.source = split, transform, strict, source
        self.samples: list[tuple[object, int]] = []
        self.dropped: Counter = Counter()
        self.corrupt: list[str] = []
        self._warned: set[str] = set()

    # -- building ---------------------------------------------------------------------------------------------
    def _add_native(self, key: object, native_id: int) -> None:
        """Keep the sample under its canonical label, or count it as dropped (non-expression, contempt in 7)."""
        c = self.native_to_canonical[native_id]
        if c < 0:
            self._drop(self._drop_reason(self.native_names[native_id]))
        else:
            self.samples.append((key, c))

    def _drop_reason(self, native_name: str) -> str:
        key = normalize_name(native_name)
        if key == "contempt":
            return f"contempt ({native_name}) in a {self.num_classes}-class set"
        return f"non-expression class {native_name}"

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def _finish(self) -> None:
        self._resolve_duplicates()
        if not self.samples:
            dropped = f"; dropped: {dict(self.dropped)}" if self.dropped else ""
            raise EmptySplitError(f"{self.dataset_name}: split {self.split!r} from {self.source} holds no "
                                  f"sample{dropped}")

    def _resolve_duplicates(self) -> None:
        """The rule for an image listed more than once: with the same label it is kept once; with different
        labels it is ambiguous and dropped (every copy). Both are counted in ``dropped`` and reported in one
        warning with the first examples; ``strict=True`` makes a conflicting label an error."""
        labels: dict[object, set] = {}
        for key, label in self.samples:
            labels.setdefault(_hashable(key), set()).add(label)
        if len(labels) == len(self.samples):
            return
        conflicts = {k for k, v in labels.items() if len(v) > 1}
        if conflicts and self.strict:
            first = sorted(map(str, conflicts))[:3]
            raise DatasetFormatError(self.source, 0, f"{len(conflicts)} image(s) are listed with different labels, "
                                                     f"e.g. {', '.join(first)}")
        kept, seen, repeats = [], set(), 0
        for key, label in self.samples:
            h = _hashable(key)
            if h in conflicts:
                continue
            if h in seen:
                repeats += 1
                continue
            seen.add(h)
            kept.append((key, label))
        n_conflict = len(self.samples) - len(kept) - repeats
        if repeats:
            self.dropped["duplicate line (same image, same label): kept once"] += repeats
        if conflicts:
            self.dropped["image listed with different labels: dropped"] += n_conflict
        examples = ", ".join(sorted(map(str, conflicts))[:3]) if conflicts else ""
        warnings.warn(f"{self.dataset_name} {self.source}: {repeats} duplicate line(s) kept once"
                      + (f"; {len(conflicts)} image(s) with conflicting labels dropped (e.g. {examples})"
                         if conflicts else ""), RuntimeWarning, stacklevel=3)
        self.samples = kept

    # -- reading ----------------------------------------------------------------------------------------------
    def load(self, key: object) -> np.ndarray:
        """RGB ``uint8 [H, W, 3]`` image of one sample key; raises :class:`CorruptImageError`."""
        raise NotImplementedError

    def describe(self, key: object) -> str:
        return str(key)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.dataset_name} {self.split!r} of size {n}")
        index %= n
        for step in range(n):
            key, label = self.samples[(index + step) % n]
            try:
                img = self.load(key)
                break
            except CorruptImageError as e:
                if self.strict:
                    raise
                self._note_corrupt(self.describe(key), e)
        else:
            raise CorruptImageError(f"{self.dataset_name} {self.split!r}: no image of the split could be decoded")
        img = to_chw_tensor(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.target_of(key, label)

    def target_of(self, key: object, label: int):
        """What ``dataset[i]`` returns as the target of sample ``key``: its canonical label. Readers with soft
        labels (FERPlus ``label_mode="probability"``) return a distribution instead."""
        return label

    def _note_corrupt(self, name: str, err: Exception) -> None:
        if name not in self._warned:
            self._warned.add(name)
            self.corrupt.append(name)
            warnings.warn(f"{self.dataset_name}: skipping a corrupt image ({len(self.corrupt)} so far): {err}",
                          RuntimeWarning, stacklevel=3)

    def verify(self) -> list[str]:
        """Decode every image once; remove the samples that fail (or raise if ``strict``). Returns their names."""
        good, bad = [], []
        for key, label in self.samples:
            try:
                self.load(key)
                good.append((key, label))
            except CorruptImageError as e:
                if self.strict:
                    raise
                bad.append(self.describe(key))
                self._note_corrupt(self.describe(key), e)
        self.samples = good
        self._finish()
        return bad

    def summary(self) -> dict:
        """Counts: ``kept``, ``class_counts`` (canonical order), ``dropped`` by reason, ``corrupt`` seen so far."""
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=self.num_classes)
        return {"dataset": self.dataset_name, "split": self.split, "source": self.source, "kept": len(self),
                "class_counts": dict(zip(self.label_names, counts.tolist())), "dropped": dict(self.dropped),
                "corrupt": len(self.corrupt)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
                f"source={self.source!r})")
