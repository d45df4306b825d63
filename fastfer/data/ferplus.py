"""FERPlus reader (``docs/datasets.md`` §5): FER2013 faces re-labelled by 10 crowd votes, majority label.

Layouts (``layout="auto"`` picks the first present):
- ``"folders"``: ``FER2013{Train,Valid,Test}/ferNNNNNNN.png`` (written by ``microsoft/FERPlus``'s
  ``src/generate_training_data.py``) + ``label.csv`` per folder, no header, in one of two forms (the column count
  is read from each row):

  - 11 columns, ``name, 10 counts``: written by the generator since it copies the votes of ``fer2013new.csv``
    (``Image name`` and the vote columns of each row, ``Usage`` dropped) — the same votes as the csv layout;
  - 12 columns, ``name, "(x, y, w, h)" face box, 10 counts``: the copies committed under the repository's
    ``data/FER2013*/label.csv``. The earlier generator wrote the PNGs only, so a folder tree built with it uses
    these files — an **earlier vote release** than ``fer2013new.csv``: the two disagree on 1,602 images
    (378 majority labels) over the three splits, so the two layouts train and test on different images and
    labels.
- ``"csv"``: ``fer2013new.csv`` (``Usage,Image name,<10 vote columns>``) beside ``fer2013.csv`` (pixels), same
  row order; rows with an empty ``Image name`` are not faces and are skipped.

Layouts that disagree are reported, not silently different: when both vote sources are under ``root`` (the
folders' ``label.csv`` and ``fer2013new.csv``), the reader compares them for its split and puts the counts in
``summary()["vote_sources"]`` (images only in one source, images whose votes differ, images whose majority
label differs), with a warning when any is non-zero; a 12-column ``label.csv`` read without ``fer2013new.csv``
beside it gets a warning that it is the earlier release.

Vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
Label = :func:`majority_vote`; samples whose vote is unknown / NF (and contempt when ``num_classes=7``) are
dropped and counted in ``summary()["dropped"]``.

``label_mode`` follows the other training modes of ``microsoft/FERPlus`` (:func:`vote_distribution`):
``"probability"`` / ``"crossentropy"`` (the top ≤ 3 emotions covering 75 % of the votes) and ``"multi_target"``
(every emotion with ≥ 30 % of the votes). ``dataset[i]`` then returns a float32 distribution over the canonical
classes as the target (train on it with a soft cross-entropy), while ``targets`` stays the argmax label (for
samplers, splits and counts). FERPlus papers test with the majority label, so ``fastfer train`` reads val/test
with ``"majority"`` whatever the train mode.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from fastfer.data.base import DatasetFormatError, FERDataset, read_image, require_dir, require_file
from fastfer.data.fer2013 import iter_csv, parse_pixels
from fastfer.labels import NATIVE_ORDERS

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


LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")


def vote_distribution(counts: Sequence[float], mode: str) -> list[float] | None:
    """The target distribution over the 10 vote columns of one FERPlus sample, or ``None`` = drop (unknown).

    Single votes are removed first (counts ≤ 1 → 0), S = the sum left (S = 0 → drop). Then:

    - ``majority``: one-hot of :func:`majority_vote` (drop when it is unknown / NF).
    - ``probability`` / ``crossentropy`` (the same targets; the modes differ only in the official loss): take
      columns in decreasing vote order, a tie group at once, until they cover ≥ 75 % of S or 3 are taken; an
      unknown / NF column ends the walk without being taken (drop when nothing was taken before it); drop when
      the taken columns cover ≤ 50 % of S or more than 3 were taken (a large tie).
    - ``multi_target``: every column with ≥ 30 % of S; drop when they cover ≤ 50 % of S or when the largest of
      them is unknown / NF; unknown / NF columns are then left out.

    The kept votes are normalised to sum to 1.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode: expected one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if len(counts) != len(VOTE_COLUMNS):
        raise ValueError(f"counts: expected {len(VOTE_COLUMNS)} vote counts, got {len(counts)}")
    kept = [0.0 if c <= 1.0 else float(c) for c in counts]
    total = sum(kept)
    if total <= 0:
        return None
    target = [0.0] * len(kept)
    if mode == "majority":
        top = majority_vote(counts)
        if top in (UNKNOWN, NOT_A_FACE):
            return None
        target[top] = 1.0
        return target
    if mode == "multi_target":
        for i, c in enumerate(kept):
            if c >= 0.3 * total:
                target[i] = c
        if sum(target) <= 0.5 * total or target.index(max(target)) >= UNKNOWN:
            return None
        target[UNKNOWN] = target[NOT_A_FACE] = 0.0
    else:
        taken = 0
        for value in sorted({c for c in kept if c > 0}, reverse=True):
            if sum(target) >= 0.75 * total or taken >= 3:
                break
            group = [i for i, c in enumerate(kept) if c == value]
            emotions = [i for i in group if i < UNKNOWN]
            for i in emotions:
                target[i] = value
            taken += len(emotions)
            if len(emotions) < len(group):  # unknown / NF reached: stop here
                break
        if taken == 0 or taken > 3 or sum(target) <= 0.5 * total:
            return None
    norm = sum(target)
    return [t / norm for t in target]


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


def _votes_from_label_csv(path: Path) -> tuple[dict[str, list[float]], int | None]:
    """A folder's ``label.csv`` → ({image name: 10 counts} in file order, its column count: 11, 12 or None
    when empty)."""
    votes: dict[str, list[float]] = {}
    columns = None
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if line == 1 and row[-1].strip().lower() == "nf":  # tolerate a header row
                continue
            if len(row) == 11:
                counts = row[1:]
            elif len(row) == 12:
                counts = row[2:]  # row[1] is the face box "(x, y, w, h)"
            else:
                raise DatasetFormatError(path, line, f"expected 11 fields (name, 10 vote counts) or 12 (name, "
                                                     f"face box, 10 vote counts), got {len(row)}")
            name = row[0].strip()
            if not name:
                raise DatasetFormatError(path, line, "expected an image name in the first field, got ''")
            columns = columns or len(row)
            votes[name] = _counts(counts, path, line)
    return votes, columns


def _split_votes_from_csv(path: Path, split: str) -> dict[str, list[float]]:
    """{image name: 10 counts} of one split of ``fer2013new.csv`` (rows without an image name skipped)."""
    votes = {}
    for line, row in iter_csv(path, ("Usage", "Image name") + VOTE_COLUMNS):
        if row["Usage"].strip() == USAGE[split] and row["Image name"].strip():
            votes[row["Image name"].strip()] = _counts([row[c] for c in VOTE_COLUMNS], path, line)
    return votes


class FERPlus(FERDataset):
    """FERPlus, 8 classes (or 7 without contempt). ``dataset[i]`` → ``(uint8 [3, 48, 48] RGB, label)``."""

    dataset_name = "FERPlus"

    def __init__(self, root: str | os.PathLike, split: str = "train", layout: str = "auto", num_classes: int = 8,
                 fer2013_csv: str | os.PathLike | None = None, transform: Callable | None = None,
                 strict: bool = False, label_mode: str = "majority"):
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode: expected one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        self.label_mode = label_mode
        self.soft_targets: dict[object, list[float]] = {}  # sample key → canonical distribution (soft modes)
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
        self.label_columns: int | None = None  # folders: 11 or 12 (see the module docstring)
        self.vote_sources: dict = {}
        if layout == "folders":
            votes = self._read_label_csv(source)
        else:
            votes = self._read_csv_pair(source, Path(fer2013_csv) if fer2013_csv else root / "fer2013.csv")
        self._compare_vote_sources(root, votes)
        self._finish()

    def _compare_vote_sources(self, root: Path, votes: dict[str, list[float]]) -> None:
        """Count how the folders' ``label.csv`` and ``fer2013new.csv`` differ on this split, when both exist."""
        import warnings

        other_path = root / "fer2013new.csv" if self.layout == "folders" else root / FOLDERS[self.split] / "label.csv"
        if not other_path.is_file():
            self.vote_sources = {"compared": False, "label_columns": self.label_columns}
            if self.label_columns == 12:
                warnings.warn(f"FERPlus {self.split}: {self.source} has 12 columns — microsoft/FERPlus's committed "
                              f"label.csv copies, an earlier vote release than fer2013new.csv (they disagree on "
                              f"1,602 images, 378 majority labels, over the three splits). Put fer2013new.csv in "
                              f"{root} to count the differences for this split, or regenerate label.csv with the "
                              f"current generator", RuntimeWarning, stacklevel=3)
            return
        if self.layout == "folders":
            folder_votes, csv_votes, columns = votes, _split_votes_from_csv(other_path, self.split), self.label_columns
        else:
            (folder_votes, columns), csv_votes = _votes_from_label_csv(other_path), votes
        common = folder_votes.keys() & csv_votes.keys()
        differ = [n for n in common if folder_votes[n] != csv_votes[n]]
        report = {"compared": True, "label_columns": columns,
                  "folders": str(root / FOLDERS[self.split] / "label.csv"), "csv": str(root / "fer2013new.csv"),
                  "only_in_folders": len(folder_votes.keys() - csv_votes.keys()),
                  "only_in_csv": len(csv_votes.keys() - folder_votes.keys()),
                  "votes_differ": len(differ),
                  "labels_differ": sum(majority_vote(folder_votes[n]) != majority_vote(csv_votes[n]) for n in differ)}
        self.vote_sources = report
        if report["only_in_folders"] or report["only_in_csv"] or report["votes_differ"]:
            warnings.warn(f"FERPlus {self.split}: the folders' label.csv and fer2013new.csv disagree — "
                          f"{report['votes_differ']} images with different votes ({report['labels_differ']} "
                          f"majority labels), {report['only_in_folders']} only in the folders, "
                          f"{report['only_in_csv']} only in the csv; this reader uses the {self.layout} layout "
                          f"({self.source})", RuntimeWarning, stacklevel=3)

    def summary(self) -> dict:
        return {**super().summary(), "vote_sources": self.vote_sources}

    def _top(self, counts: list[float]) -> tuple[int, list[float] | None]:
        """(vote column of the label — UNKNOWN when dropped, the 10-column distribution or None)."""
        if self.label_mode == "majority":
            return majority_vote(counts), None
        dist = vote_distribution(counts, self.label_mode)
        return (UNKNOWN, None) if dist is None else (dist.index(max(dist)), dist)

    def _keep(self, key, counts: list[float], decided: tuple[int, list[float] | None] | None = None) -> None:
        """Add the sample under its label (with its distribution in soft modes) or count it as dropped;
        ``decided`` = ``self._top(counts)`` when the caller already has it."""
        top, dist = decided if decided is not None else self._top(counts)
        before = len(self.samples)
        self._add_native(key, top)
        if dist is not None and len(self.samples) > before:
            soft = [0.0] * self.num_classes  # fold the vote columns onto the canonical classes
            for column, p in enumerate(dist):
                c = self.native_to_canonical[column]
                if c >= 0:
                    soft[c] += p
            norm = sum(soft)
            self.soft_targets[key] = [p / norm for p in soft]

    def target_of(self, key, label: int):
        if self.label_mode == "majority":
            return label
        return torch.tensor(self.soft_targets[key], dtype=torch.float32)

    def _drop_reason(self, native_name: str) -> str:
        if native_name in ("unknown", "NF"):
            return f"vote {native_name}"
        return super()._drop_reason(native_name)

    def _read_label_csv(self, path: Path) -> dict[str, list[float]]:
        votes, self.label_columns = _votes_from_label_csv(path)
        for name, counts in votes.items():
            self._keep(name, counts)
        return votes

    def _read_csv_pair(self, votes_path: Path, pixels_path: Path) -> None:
        require_file(pixels_path, "FER2013 pixels file (fer2013.csv) for the FERPlus csv layout")
        rows = iter_csv(pixels_path, ("emotion", "pixels", "Usage"))
        self.images: dict[int, object] = {}
        votes: dict[str, list[float]] = {}
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
            votes[vote_row["Image name"].strip()] = counts
            decided = self._top(counts)
            if decided[0] in (UNKNOWN, NOT_A_FACE):
                self._keep(None, counts, decided)  # dropped: no need to parse the pixels
                continue
            key = len(self.images)
            self.images[key] = parse_pixels(pix_row["pixels"], pixels_path, pix_line)
            self._keep(key, counts, decided)
        extra = next(rows, None)
        if extra is not None:
            raise DatasetFormatError(pixels_path, extra[0], f"more rows than {votes_path}: the two files must "
                                                            f"have the same rows in the same order")
        return votes

    def load(self, key):
        if self.layout == "folders":
            return read_image(self.folder / key)
        return self.images[key]

    def describe(self, key) -> str:
        return str(self.folder / key) if self.layout == "folders" else f"{self.source} face {key}"
