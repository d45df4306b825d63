"""Generic class-folder reader: ``root/<class name>/<image>`` — expression folders, or any class set of your own.

Two label modes:

- **expressions** (when every folder names an expression): classes are mapped to the canonical order **by name**.
  The native order is the alphabetical folder order (what ``torchvision.datasets.ImageFolder`` would use), so a
  model trained elsewhere on the same folders can be converted with :func:`fastfer.labels.order_map`. Folder
  names are folded by :func:`fastfer.labels.normalize_name` (``Angry`` → anger, ``happiness`` → happy, …);
  non-expression folders (``unknown``, ``NF``, ``None``, …) are dropped and counted; ``class_map`` renames
  folders (``{"class_0": "anger"}``).
- **own labels** (any other class names — ``engaged`` / ``bored`` / ``confused``, ``pain`` / ``no_pain`` …): the
  label names are the folder names (alphabetical; class i = the i-th folder) or ``labels=[...]`` in the order
  given, so a model can be fine-tuned on any class set; the checkpoint stores these names and prediction, eval
  and export use them.

``labels``: None (default) = expressions when every folder is an expression name (or ``num_classes`` is given),
else own labels from the folders (with a warning when only some folders are expression names, which usually is a typo);
``"expressions"`` / ``"folders"`` force a mode; a list of names = own labels in that order (folders matched by
name, case-insensitively; folders not listed are dropped and counted; a listed name without a folder is a class
with no sample here). Read the val/test splits with the train split's ``label_names`` as ``labels`` so a split
that lacks a class folder keeps the same class indices.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

from fastfer.data.base import IMG_EXTENSIONS, FERDataset, UnknownLabelError, read_image, require_dir
from fastfer.labels import normalize_name

LABEL_MODES = ("expressions", "folders")


def _expression_name(name: str):
    try:
        return normalize_name(name)
    except UnknownLabelError:
        return None


class ImageFolderFER(FERDataset):
    """Class folders under ``root``. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, label)``: the canonical index in
    expression mode, the index into ``label_names`` with own labels (``own_labels`` tells which).

    Args:
        num_classes: expressions only: 7 or 8; default 8 when a folder is contempt, else 7.
        class_map: folder name → label name (applied before anything else).
        labels: None, ``"expressions"``, ``"folders"`` or a sequence of class names (see the module docstring).
        split: only a tag for messages and the summary.
    """

    dataset_name = "ImageFolder"

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None,
                 class_map: Mapping[str, str] | None = None, transform: Callable | None = None,
                 strict: bool = False, split: str = "all", extensions: tuple[str, ...] = IMG_EXTENSIONS,
                 labels: Union[None, str, Sequence[str]] = None):
        self.root = require_dir(root, f"{self.dataset_name} root")
        class_map = dict(class_map or {})
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FileNotFoundError(f"{self.dataset_name} root {self.root}: expected one sub-folder per class, "
                                    f"found none")
        named = [class_map.get(f, f) for f in folders]
        mode = "expressions" if labels is None and num_classes is not None else self._mode(labels, named)
        if mode == "expressions":
            self._init_expressions(folders, named, num_classes, transform, strict, split)
        else:
            if num_classes is not None:
                raise ValueError(f"num_classes: only for expression folders (7 or 8); with own labels the class "
                                 f"count is the number of labels, got num_classes={num_classes!r}")
            names = list(named) if isinstance(labels, str) or labels is None else list(labels)
            self._init_own(folders, named, names, transform, strict, split)
        self.folders = tuple(folders)
        for folder, native in zip(folders, self._folder_ids):
            if native is None:
                continue
            for dirpath, _, files in sorted(os.walk(self.root / folder)):
                for fn in sorted(files):
                    if fn.lower().endswith(extensions):
                        rel = os.path.relpath(os.path.join(dirpath, fn), self.root)
                        if native < 0:
                            self._drop(f"folder {folder} not in labels")
                        else:
                            self._add_native(rel, native)
        self._finish()

    def _mode(self, labels, named: list[str]) -> str:
        if labels is None:
            expression = [n for n in named if _expression_name(n) is not None]
            if len(expression) == len(named):
                return "expressions"
            if expression:
                others = [n for n in named if _expression_name(n) is None]
                warnings.warn(f"{self.dataset_name} {self.root}: folders {others} are not expression names while "
                              f"{expression} are: reading the folders as an own label set of {len(named)} classes. "
                              f"Pass labels='expressions' (with class_map for the others) if they are expressions, "
                              f"or labels=[...] to make the class set explicit", RuntimeWarning, stacklevel=3)
            return "folders"
        if isinstance(labels, str):
            if labels not in LABEL_MODES:
                raise ValueError(f"labels: expected None, {' / '.join(map(repr, LABEL_MODES))} or a list of class "
                                 f"names, got {labels!r}")
            return labels
        names = list(labels)
        if len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"labels: expected at least 2 non-empty class names, got {labels!r}")
        if len({n.lower() for n in names}) != len(names):
            raise ValueError(f"labels: expected distinct class names, got {names}")
        return "own"

    def _init_expressions(self, folders, named, num_classes, transform, strict, split) -> None:
        names = []
        for f, n in zip(folders, named):
            try:
                names.append(normalize_name(n))
            except UnknownLabelError as e:
                raise UnknownLabelError(f"{self.dataset_name} class folder {self.root / f}: {e} — pass "
                                        f"class_map={{{f!r}: '<expression>'}} to name it, or labels='folders' "
                                        f"to train on the folder names as your own classes") from None
        if num_classes is None:
            num_classes = 8 if "contempt" in names else 7
        super().__init__(names, num_classes, split=split, transform=transform, strict=strict, source=str(self.root))
        # native_names keep the folders' spelling (class_map applied): alphabetical folder order = native ids
        self.native_names = tuple(named)
        self.own_labels = False
        self._folder_ids = list(range(len(folders)))

    def _init_own(self, folders, named, names: list[str], transform, strict, split) -> None:
        FERDataset.__init__(self, (), 8, split=split, transform=transform, strict=strict, source=str(self.root))
        self.own_labels = True
        self.label_names = tuple(names)
        self.num_classes = len(names)
        self.native_names = self.label_names
        self.native_to_canonical = tuple(range(len(names)))  # own labels: native id = label index
        index = {n.lower(): i for i, n in enumerate(names)}
        self._folder_ids = [index.get(n.lower(), -1) for n in named]
        if all(i < 0 for i in self._folder_ids):
            raise ValueError(f"labels: none of {names} is a class folder of {self.root} (folders: {folders})")

    def load(self, key):
        return read_image(self.root / key)

    def describe(self, key) -> str:
        return str(Path(self.root) / key)
