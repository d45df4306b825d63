"""AffectNet reader, 7 or 8 classes (``docs/datasets.md`` §6).

Layouts (``layout="auto"`` picks the first present under ``root``):
- ``"csv"`` (original release): ``Manually_Annotated_file_lists/{training,validation}.csv`` with columns
  ``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression, valence,
  arousal``; images under ``Manually_Annotated/Manually_Annotated_Images/`` (or ``Manually_Annotated_Images/``).
  ``crop=True`` cuts the face box out on load.
- ``"npy"`` (train_set / val_set release): ``{train,val}_set/images/<idx>.jpg`` with
  ``{train,val}_set/annotations/<idx>_exp.npy``.
- ``"folder"``: ``{train,val}/<class>/*`` where a numeric folder name is an AffectNet id (``0`` … ``10``), never
  an alphabetical index; a non-numeric name is mapped by name.
Ids: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None, 9 Uncertain,
10 No-Face. AffectNet-8 keeps 0–7; AffectNet-7 also drops 7. Dropped samples are counted in ``summary()``.
The official validation set is the test set of the papers (``split="val"``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from fastfer.data.base import (
    IMG_EXTENSIONS,
    CorruptImageError,
    DatasetFormatError,
    FERDataset,
    UnknownLabelError,
    read_image,
    require_dir,
    require_file,
)
from fastfer.data.fer2013 import iter_csv, parse_label
from fastfer.labels import NATIVE_ORDERS, normalize_name

SPLITS = ("train", "val")
CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")


def _detect(root: Path, split: str) -> str:
    if (root / "Manually_Annotated_file_lists").is_dir():
        return "csv"
    if (root / f"{split}_set").is_dir():
        return "npy"
    if (root / split).is_dir():
        return "folder"
    raise FileNotFoundError(f"AffectNet root {root}: expected one of Manually_Annotated_file_lists/ (csv layout), "
                            f"{split}_set/ (npy layout) or {split}/ (folder layout)")


class AffectNet(FERDataset):
    """AffectNet-7/8. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, canonical label)``."""

    dataset_name = "AffectNet"

    def __init__(self, root: str | os.PathLike, split: str = "train", num_classes: int = 8, layout: str = "auto",
                 crop: bool = False, transform: Callable | None = None, strict: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS} (the official validation set is the usual test "
                             f"set), got {split!r}")
        if num_classes not in (7, 8):
            raise ValueError(f"num_classes: expected 7 or 8, got {num_classes!r}")
        root = require_dir(root, "AffectNet root")
        layout = _detect(root, split) if layout == "auto" else layout
        if layout not in ("csv", "npy", "folder"):
            raise ValueError(f"layout: expected 'auto', 'csv', 'npy' or 'folder', got {layout!r}")
        self.layout, self.crop = layout, crop
        self.boxes: dict[str, tuple[int, int, int, int]] = {}
        super().__init__(NATIVE_ORDERS["affectnet"], num_classes, split=split, transform=transform, strict=strict)
        getattr(self, f"_read_{layout}")(root, split)
        self._finish()

    def _read_csv(self, root: Path, split: str) -> None:
        path = require_file(root / "Manually_Annotated_file_lists" / CSV_FILES[split], f"AffectNet {split} list")
        self.source = str(path)
        nested = root / "Manually_Annotated" / "Manually_Annotated_Images"
        self.image_dir = nested if nested.is_dir() else require_dir(
            root / "Manually_Annotated_Images", f"AffectNet images (or {nested})")
        for line, row in iter_csv(path, CSV_COLUMNS):
            native = parse_label(row["expression"], path, line, 11, "expression")
            rel = row["subDirectory_filePath"].strip()
            if not rel:
                raise DatasetFormatError(path, line, "expected an image path in subDirectory_filePath, got ''")
            if self.crop and self.native_to_canonical[native] >= 0:
                try:
                    box = tuple(int(float(row[c])) for c in CSV_COLUMNS[1:5])
                except ValueError:
                    raise DatasetFormatError(path, line, "expected numeric face_x, face_y, face_width, "
                                                         "face_height") from None
                if box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
                    raise DatasetFormatError(path, line, f"expected a face box with x, y ≥ 0 and width, height > 0, "
                                                         f"got {box}")
                self.boxes[rel] = box
            self._add_native(rel, native)

    def _read_npy(self, root: Path, split: str) -> None:
        base = require_dir(root / f"{split}_set", f"AffectNet {split}_set")
        self.image_dir = require_dir(base / "images", f"AffectNet {split}_set images")
        ann = require_dir(base / "annotations", f"AffectNet {split}_set annotations")
        self.source = str(base)
        files = [p for p in self.image_dir.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
        files.sort(key=lambda p: (0, int(p.stem), "") if p.stem.isascii() and p.stem.isdigit() else (1, 0, p.stem))
        for img in files:
            exp = require_file(ann / f"{img.stem}_exp.npy", f"AffectNet expression annotation of {img.name}")
            try:
                value = np.load(exp, allow_pickle=False)
                native = int(str(value.reshape(-1)[0]).strip())
            except (ValueError, IndexError, OSError) as e:
                raise DatasetFormatError(exp, 1, f"expected one expression id 0..10, could not read it ({e})") from None
            if not 0 <= native <= 10:
                raise DatasetFormatError(exp, 1, f"expected an expression id in 0..10, got {native}")
            self._add_native(img.name, native)

    def _read_folder(self, root: Path, split: str) -> None:
        self.image_dir = require_dir(root / split, f"AffectNet {split} folder")
        self.source = str(self.image_dir)
        for d in sorted(p for p in self.image_dir.iterdir() if p.is_dir()):
            if d.name.isascii() and d.name.isdigit():
                native = int(d.name)
                if native > 10:
                    raise ValueError(f"AffectNet folder {d}: expected a class id 0..10, got {d.name}")
            else:  # a class named by its word: find it in the AffectNet order by name
                known = [normalize_name(n) for n in self.native_names]
                if normalize_name(d.name) not in known:
                    raise UnknownLabelError(f"AffectNet folder {d}: {d.name!r} is not an AffectNet class "
                                            f"(expected an id 0..10 or one of {', '.join(self.native_names)})")
                native = known.index(normalize_name(d.name))
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMG_EXTENSIONS:
                    self._add_native(f"{d.name}/{f.name}", native)

    def load(self, key):
        img = read_image(self.image_dir / key)
        box = self.boxes.get(key)
        if box is not None:
            x, y, w, h = box
            img = img[y:y + h, x:x + w]
            if img.size == 0:
                raise CorruptImageError(f"face box {box} lies outside image {self.image_dir / key}")
        return img

    def describe(self, key) -> str:
        return str(self.image_dir / key)
