"""RAF-DB (basic) reader (``docs/datasets.md`` §3).

Layout (``root`` = the ``basic`` folder, or a folder holding ``basic/``)::

    EmoLabel/list_patition_label.txt      "train_00001.jpg 5" per line, labels 1..7, split by name prefix
    Image/original/train_00001.jpg
    Image/aligned/train_00001_aligned.jpg  stock 100×100 crops
    EmoLabel/train.txt, EmoLabel/test.txt  APViT's lists (same line format; "_aligned" in names is ignored)
    Image/aligned_224/train_00001.jpg      APViT's MTCNN re-aligned 224×224 crops

``images``: ``"aligned"`` (stock), ``"original"``, ``"apvit"`` (APViT lists + ``aligned_224``), or a path to a
folder of your own aligned crops named like the originals (``train_00001.jpg``) or like the stock crops
(``train_00001_aligned.jpg``); which naming is used is decided from the first listed file.
RAF-DB has no validation split: take one from train with :func:`fastfer.data.split.train_val_split`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from fastfer.data.base import DatasetFormatError, FERDataset, read_image, require_dir, require_file
from fastfer.data.textfile import parse_int, read_lines
from fastfer.labels import NATIVE_ORDERS

SPLITS = ("train", "test")


def _stem(name: str) -> str:
    stem = os.path.splitext(name)[0]
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem


def _file_name(listed: str, naming: str) -> str:
    """Image file name for a listed name: ``plain`` (``_aligned`` stripped), ``aligned`` (stock crops) or as listed."""
    if naming == "aligned":
        return _stem(listed) + "_aligned.jpg"
    if naming == "plain":
        return _stem(listed) + os.path.splitext(listed)[1]
    return listed


def read_rafdb_list(path: Path) -> list[tuple[int, str, int]]:
    """Parse a RAF-DB list file → ``[(line number, file name, native id 0..6)]`` (file labels are 1-based)."""
    rows = []
    for lineno, line in read_lines(path, "RAF-DB list"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetFormatError(path, lineno, f"expected '<image name> <label 1..7>', got {line.strip()!r}")
        name, label = parts
        rows.append((lineno, name, parse_int(label, path, lineno, "a label", 1, 7, column=2) - 1))
    return rows


class RAFDB(FERDataset):
    """RAF-DB basic, 7 classes. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, canonical label)``."""

    dataset_name = "RAF-DB"

    def __init__(self, root: str | os.PathLike, split: str = "train", images: str = "aligned",
                 transform: Callable | None = None, strict: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS} (RAF-DB has no validation split; use "
                             f"fastfer.data.split.train_val_split), got {split!r}")
        root = require_dir(root, "RAF-DB root")
        if not (root / "EmoLabel").is_dir() and (root / "basic" / "EmoLabel").is_dir():
            root = root / "basic"
        if images == "apvit":
            list_file = require_file(root / "EmoLabel" / f"{split}.txt", f"APViT RAF-DB {split} list")
            self.image_dir = require_dir(root / "Image" / "aligned_224", "APViT aligned RAF-DB images")
            naming = "plain"
        else:
            list_file = require_file(root / "EmoLabel" / "list_patition_label.txt", "RAF-DB label file")
            if images == "aligned":
                self.image_dir = require_dir(root / "Image" / "aligned", "RAF-DB stock aligned images")
                naming = "aligned"
            elif images == "original":
                self.image_dir = require_dir(root / "Image" / "original", "RAF-DB original images")
                naming = "plain"
            elif Path(images).is_dir():
                self.image_dir = Path(images)
                naming = None  # decided from the first listed file below
            else:
                raise ValueError(f"images: expected 'aligned', 'original', 'apvit' or an existing directory, "
                                 f"got {images!r}")
        super().__init__(NATIVE_ORDERS["rafdb"], 7, split=split, transform=transform, strict=strict,
                         source=str(list_file))
        rows = read_rafdb_list(list_file)
        if images != "apvit":
            for lineno, name, _ in rows:
                if not name.startswith(("train_", "test_")):
                    raise DatasetFormatError(list_file, lineno, f"expected a name starting with 'train_' or "
                                                                f"'test_', got {name!r}")
            rows = [r for r in rows if r[1].startswith(split + "_")]
        if rows and naming is None:
            first = rows[0][1]
            if (self.image_dir / first).is_file() or not (self.image_dir / (_stem(first) + "_aligned.jpg")).is_file():
                naming = "as_listed"
            else:
                naming = "aligned"
        for _, name, native in rows:
            self._add_native(_file_name(name, naming), native)
        self._finish()

    def load(self, key):
        return read_image(self.image_dir / key)

    def describe(self, key) -> str:
        return str(self.image_dir / key)
