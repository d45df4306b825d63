"""Image list files: one image per line, ``path  text_label  int_label`` (FER-former's format, ``docs/datasets.md``
§3) or ``path  text_label``.

Labels are mapped to canonical **by the text label** (``happy``, ``Happiness``, ``angry``, … folded by
:func:`fastfer.labels.normalize_name`); the integer column, when present, must agree with it: every line
with the same text label carries the same integer, and no integer names two classes, else the error names the
file and line. The native order (``native_names``) is the classes sorted by that integer, so a model trained
on the list elsewhere converts with :func:`fastfer.labels.order_map`.

Paths are relative to ``root`` (default: the list file's folder) or absolute. A path may contain spaces: the
label columns are split off the right end of the line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from fastfer.data.base import DatasetFormatError, FERDataset, read_image, require_dir, require_file
from fastfer.data.textfile import parse_int, read_lines
from fastfer.labels import UnknownLabelError, normalize_name


def _numeric(text: str) -> bool:
    """Looks like a number column (digits incl. ``²``-like ones, a sign, a decimal point): parse_int decides."""
    core = text.lstrip("-+").replace(".", "", 1)
    return bool(core) and core.isdigit()


def read_label_list(path: Path) -> list[tuple[int, str, str, int | None]]:
    """Parse a list file → ``[(line number, image path, text label, int label or None)]``."""
    rows = []
    for lineno, line in read_lines(path, "image list"):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=2)
        if len(parts) == 3 and _numeric(parts[2]):
            image, name = parts[0], parts[1]
            number = parse_int(parts[2], path, lineno, "a label id", 0, column=3)
        elif len(parts) >= 2 and not _numeric(parts[-1]):
            image, name, number = text.rsplit(maxsplit=1)[0], parts[-1], None
        else:
            raise DatasetFormatError(path, lineno, f"expected '<image path> <text label> <int label>' or "
                                                   f"'<image path> <text label>', got {text!r}")
        try:
            normalize_name(name)
        except UnknownLabelError as e:
            raise DatasetFormatError(path, lineno, str(e)) from None
        if rows and (rows[0][3] is None) != (number is None):
            raise DatasetFormatError(path, lineno, f"this line {'lacks' if number is None else 'has'} the int "
                                                   f"label column that line {rows[0][0]} "
                                                   f"{'has' if number is None else 'lacks'}")
        rows.append((lineno, image, name, number))
    return rows


def _native_order(rows, path: Path) -> tuple[list[str], dict[str, int]]:
    """Native class names ordered by their integer label (first appearance when the file has none), and the
    folded name → native id map; inconsistent integer columns are errors naming the line."""
    first: dict[str, tuple[str, int | None, int]] = {}  # folded name → (spelling, int label, line)
    owner: dict[int, tuple[str, int]] = {}  # int label → (folded name, line)
    for lineno, _, name, number in rows:
        key = normalize_name(name)
        if key not in first:
            first[key] = (name, number, lineno)
        elif first[key][1] != number:
            raise DatasetFormatError(path, lineno, f"label {name!r} has id {number}, but line {first[key][2]} "
                                                   f"gave it {first[key][1]}")
        if number is not None:
            if number in owner and owner[number][0] != key:
                raise DatasetFormatError(path, lineno, f"id {number} names {name!r} here and "
                                                       f"{first[owner[number][0]][0]!r} on line {owner[number][1]}")
            owner.setdefault(number, (key, lineno))
    has_ids = rows[0][3] is not None  # read_label_list made every line agree
    keys = sorted(first, key=lambda k: first[k][1]) if has_ids else list(first)
    return [first[k][0] for k in keys], {k: i for i, k in enumerate(keys)}


class LabelList(FERDataset):
    """The images of one list file. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, canonical label)``.

    Args:
        list_file: the list (``path  text_label  int_label`` per line).
        root: folder the relative image paths start from (default: the list file's folder).
        num_classes: 7 or 8; default 8 when contempt is listed, else 7 (contempt is then dropped and counted).
        split: a tag for messages and the summary.
        strict: raise on a corrupt image instead of skipping it with a counted warning.
    """

    dataset_name = "label list"

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                 num_classes: int | None = None, split: str = "all", transform: Callable | None = None,
                 strict: bool = False):
        list_file = require_file(list_file, "image list file")
        self.root = require_dir(root if root is not None else list_file.parent, "image list root")
        rows = read_label_list(list_file)
        if not rows:
            raise DatasetFormatError(list_file, 0, "the list holds no image line")
        names, native_id = _native_order(rows, list_file)
        if num_classes is None:
            num_classes = 8 if "contempt" in native_id else 7
        super().__init__(names, num_classes, split=split, transform=transform, strict=strict,
                         source=str(list_file))
        for _, image, name, _ in rows:
            self._add_native(image, native_id[normalize_name(name)])
        self._finish()

    def load(self, key):
        return read_image(self.root / key)

    def describe(self, key) -> str:
        return str(self.root / key)
