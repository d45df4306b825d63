"""FER2013 reader (``docs/datasets.md`` §4): 48×48 gray faces stored as pixel strings in a CSV.

Layouts:
- ``fer2013.csv`` with columns ``emotion,pixels,Usage``; ``Usage`` Training / PublicTest / PrivateTest map to
  the splits ``train`` / ``val`` / ``test`` (the FERPlus convention);
- pre-split ``train.csv`` / ``val.csv`` / ``test.csv`` with ``emotion,pixels`` (``Usage`` optional, ignored).
``root`` is the folder holding them, or the path of a CSV file (then every row of it is read, or only the rows
of ``split`` when it has a ``Usage`` column).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fastfer.data.base import DatasetFormatError, FERDataset, require_dir
from fastfer.data.textfile import parse_int, read_text
from fastfer.labels import NATIVE_ORDERS

USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
SIDE = 48


def parse_pixels(text: str, path: Path, line: int, side: int = SIDE) -> np.ndarray:
    """A space-separated pixel string → ``uint8 [side, side]``; malformed strings name the file and line."""
    parts = text.split()
    if len(parts) != side * side:
        raise DatasetFormatError(path, line, f"expected {side * side} pixel values, got {len(parts)}")
    try:
        values = np.array(parts, dtype=np.int32)
    except ValueError:
        bad = next((p for p in parts if not (p.lstrip("-").isascii() and p.lstrip("-").isdigit())), parts[0])
        raise DatasetFormatError(path, line, f"expected integer pixel values, got {bad!r}") from None
    if values.min() < 0 or values.max() > 255:
        raise DatasetFormatError(path, line, f"expected pixel values in 0..255, got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(side, side)


def iter_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a headed CSV as ``(line number, {column: value})``; checks the header and the field counts."""
    with io.StringIO(read_text(path, "CSV file"), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetFormatError(path, 1, "empty file: expected a header row")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetFormatError(path, 1, f"expected columns {', '.join(required)}; missing {', '.join(missing)}"
                                              f" (header: {', '.join(header)})")
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DatasetFormatError(path, reader.line_num, f"expected {len(header)} fields, got {len(row)}")
            yield reader.line_num, dict(zip(header, row))


def parse_label(text: str, path: Path, line: int, n: int, column: str = "emotion") -> int:
    return parse_int(text, path, line, column, 0, n - 1)


class FER2013(FERDataset):
    """FER2013, 7 classes, gray images expanded to RGB. ``dataset[i]`` → ``(uint8 [3, 48, 48], label)``."""

    dataset_name = "FER2013"

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 strict: bool = False):
        if split not in USAGE:
            raise ValueError(f"split: expected one of {', '.join(USAGE)}, got {split!r}")
        path = Path(root)
        if path.is_dir():
            combined, presplit = path / "fer2013.csv", path / f"{split}.csv"
            if combined.is_file():
                path = combined
            elif presplit.is_file():
                path = presplit
            else:
                raise FileNotFoundError(f"FER2013 root {root}: expected {combined} (or the pre-split {presplit})")
        elif not path.is_file():
            require_dir(path, "FER2013 root (a folder holding fer2013.csv, or the CSV itself)")
        super().__init__(NATIVE_ORDERS["fer2013"], 7, split=split, transform=transform, strict=strict,
                         source=str(path))
        presplit = path.name in {f"{s}.csv" for s in USAGE}  # a pre-split file is the split: Usage is ignored
        images = []
        for line, row in iter_csv(path, ("emotion", "pixels")):
            usage = row.get("Usage", "").strip()
            if "Usage" in row and not presplit:
                if usage not in USAGE.values():
                    raise DatasetFormatError(path, line, f"expected Usage in {', '.join(USAGE.values())}, "
                                                         f"got {usage!r}")
                if usage != USAGE[split]:
                    continue
            native = parse_label(row["emotion"], path, line, 7)
            images.append(parse_pixels(row["pixels"], path, line))
            self._add_native(len(images) - 1, native)
        self.images = np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8)
        self._finish()

    def load(self, key):
        return self.images[key]

    def describe(self, key) -> str:
        return f"{self.source} row {key}"
