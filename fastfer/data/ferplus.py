"""FERPlus reader (``datasets.md`` §5): FER2013 faces re-labelled by 10 crowd votes, majority label.

Layouts (``layout="auto"`` picks the first present):
- ``"folders"``: the generator's output ``FER2013{Train,Valid,Test}/ferNNNNNNN.png`` + ``label.csv`` per
  folder, no header, either 11 columns (``name, 10 counts``, current generator) or 12 columns (``name, "(x, y,
  w, h)" face box, 10 counts``, the committed copies); the column count is read from each row.
- ``"csv"``: ``fer2013new.csv`` (``Usage,Image name,<10 vote columns>``) beside ``fer2013.csv`` (pixels), same
  row order; rows with an empty ``Image name`` are not faces and are skipped.

Vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
Label = :func:`majority_vote`; samples whose vote is unknown / NF (and contempt when ``num_classes=7``) are
dropped and counted in ``summary()["dropped"]``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

from fastfer.data.base import DatasetFormatError, FERDataset, read_image, require_dir, require_file
from fastfer.data.fer2013 import iter_csv, parse_pixels
from fastfer.data.labels import NATIVE_ORDERS

FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
VOTE_COLUMNS = NATIVE_ORDERS["ferplus"]
UNKNOWN, NOT_A_FACE = 8, 9


def majority_vote(counts: Sequence[float]) -> int:
    """The FERPlus majority label of 10 vote counts (``microsoft/FERPlus`` ``ferplus.py``, mode ``majority``).

    1. counts ≤ 1 are set to 0 (single-vote outliers); 2. S = sum of the rest; 3. if the largest count
    > S / 2 the label is its column, else (also when S = 0) ``UNKNOWN`` (8). Returns a column index 0..9;
    8 (unknown) and 9 (NF) mean "drop".
    """
    if len(counts) != len(VOTE_COLUMNS):
        raise ValueError(f"counts: expected {len(VOTE_COLUMNS)} vote counts, got {len(counts)}")
    kept = [0.0 if c <= 1.0 else float(c) for c in counts]
    total = sum(kept)
    top = max(kept)
    if total > 0 and top > 0.5 * total:
        return kept.index(top)  # unique: a value above half the sum cannot tie
    return UNKNOWN


def _counts(values: Sequence[str], path: Path, line: int) -> list[float]:
    out = []
    for v in values:
        try:
            c = float(v)
        except ValueError:
            raise DatasetFormatError(path, line, f"expected a vote count, got {v.strip()!r}") from None
        if c < 0 or c != c:
            raise DatasetFormatError(path, line, f"expected a vote count ≥ 0, got {v.strip()!r}")
        out.append(c)
    return out


class FERPlus(FERDataset):
    """FERPlus, 8 classes (or 7 without contempt). ``dataset[i]`` → ``(uint8 [3, 48, 48] RGB, label)``."""

    dataset_name = "FERPlus"

    def __init__(self, root: str | os.PathLike, split: str = "train", layout: str = "auto", num_classes: int = 8,
                 fer2013_csv: str | os.PathLike | None = None, transform: Callable | None = None,
                 strict: bool = False):
        if split not in FOLDERS:
            raise ValueError(f"split: expected one of {', '.join(FOLDERS)}, got {split!r}")
        root = require_dir(root, "FERPlus root")
        if layout == "auto":
            layout = "folders" if (root / FOLDERS[split]).is_dir() else "csv"
        if layout not in ("folders", "csv"):
            raise ValueError(f"layout: expected 'auto', 'folders' or 'csv', got {layout!r}")
        if layout == "folders":
            self.folder = require_dir(root / FOLDERS[split], f"FERPlus {split} folder")
            source = require_file(self.folder / "label.csv", f"FERPlus {split} label file")
        else:
            source = require_file(root / "fer2013new.csv", "FERPlus label file (or the FER2013Train/... folders)")
        super().__init__(VOTE_COLUMNS, num_classes, split=split, transform=transform, strict=strict,
                         source=str(source))
        self.layout = layout
        if layout == "folders":
            self._read_label_csv(source)
        else:
            self._read_csv_pair(source, Path(fer2013_csv) if fer2013_csv else root / "fer2013.csv")
        self._finish()

    def _keep(self, key, counts: list[float]) -> None:
        self._add_native(key, majority_vote(counts))

    def _drop_reason(self, native_name: str) -> str:
        if native_name in ("unknown", "NF"):
            return f"vote {native_name}"
        return super()._drop_reason(native_name)

    def _read_label_csv(self, path: Path) -> None:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if line == 1 and row[-1].strip().lower() == "nf":  # tolerate a header row
                    continue
                if len(row) == 11:
                    votes = row[1:]
                elif len(row) == 12:
                    votes = row[2:]  # row[1] is the face box "(x, y, w, h)"
                else:
                    raise DatasetFormatError(path, line, f"expected 11 fields (name, 10 vote counts) or 12 (name, "
                                                         f"face box, 10 vote counts), got {len(row)}")
                name = row[0].strip()
                if not name:
                    raise DatasetFormatError(path, line, "expected an image name in the first field, got ''")
                self._keep(name, _counts(votes, path, line))

    def _read_csv_pair(self, votes_path: Path, pixels_path: Path) -> None:
        require_file(pixels_path, "FER2013 pixels file (fer2013.csv) for the FERPlus csv layout")
        rows = iter_csv(pixels_path, ("emotion", "pixels", "Usage"))
        self.images: dict[int, object] = {}
        for line, vote_row in iter_csv(votes_path, ("Usage", "Image name") + VOTE_COLUMNS):
            pix = next(rows, None)
            if pix is None:
                raise DatasetFormatError(votes_path, line, f"no matching row left in {pixels_path}: the two files "
                                                           f"must have the same rows in the same order")
            pix_line, pix_row = pix
            if pix_row["Usage"].strip() != vote_row["Usage"].strip():
                raise DatasetFormatError(
                    votes_path, line, f"Usage {vote_row['Usage'].strip()!r} differs from {pixels_path} line "
                                      f"{pix_line} ({pix_row['Usage'].strip()!r}): the two files must have the "
                                      f"same rows in the same order")
            if vote_row["Usage"].strip() != USAGE[self.split]:
                continue
            if not vote_row["Image name"].strip():
                self._drop("empty Image name (not a face)")
                continue
            counts = _counts([vote_row[c] for c in VOTE_COLUMNS], votes_path, line)
            if majority_vote(counts) in (UNKNOWN, NOT_A_FACE):
                self._keep(None, counts)  # dropped: no need to parse the pixels
                continue
            key = len(self.images)
            self.images[key] = parse_pixels(pix_row["pixels"], pixels_path, pix_line)
            self._keep(key, counts)
        extra = next(rows, None)
        if extra is not None:
            raise DatasetFormatError(pixels_path, extra[0], f"more rows than {votes_path}: the two files must "
                                                            f"have the same rows in the same order")

    def load(self, key):
        if self.layout == "folders":
            return read_image(self.folder / key)
        return self.images[key]

    def describe(self, key) -> str:
        return str(self.folder / key) if self.layout == "folders" else f"{self.source} face {key}"
