"""Generic class-folder reader: ``root/<class name>/<image>``, classes mapped to canonical **by name**.

The native order is the alphabetical folder order (what ``torchvision.datasets.ImageFolder`` would use), so a
model trained elsewhere on the same folders can be converted with :func:`fastfer.labels.order_map`.
Folder names are folded by :func:`fastfer.labels.normalize_name` (``Angry`` → anger, ``happiness`` →
happy, …); non-expression folders (``unknown``, ``NF``, ``None``, …) are dropped and counted; any other name is
an error unless ``class_map`` says what it means.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

from fastfer.data.base import IMG_EXTENSIONS, FERDataset, UnknownLabelError, read_image, require_dir
from fastfer.labels import normalize_name


class ImageFolderFER(FERDataset):
    """Class folders under ``root``. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, canonical label)``.

    Args:
        num_classes: 7 or 8; default 8 when a folder is contempt, else 7.
        class_map: folder name → label name for folders whose names are not expression words
            (e.g. ``{"class_0": "anger"}``).
        split: only a tag for messages and the summary.
    """

    dataset_name = "ImageFolder"

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None,
                 class_map: Mapping[str, str] | None = None, transform: Callable | None = None,
                 strict: bool = False, split: str = "all", extensions: tuple[str, ...] = IMG_EXTENSIONS):
        self.root = require_dir(root, f"{self.dataset_name} root")
        class_map = dict(class_map or {})
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FileNotFoundError(f"{self.dataset_name} root {self.root}: expected one sub-folder per class, "
                                    f"found none")
        names = []
        for f in folders:
            try:
                names.append(normalize_name(class_map.get(f, f)))
            except UnknownLabelError as e:
                raise UnknownLabelError(f"{self.dataset_name} class folder {self.root / f}: {e} — pass "
                                        f"class_map={{{f!r}: '<expression>'}} to name it") from None
        if num_classes is None:
            num_classes = 8 if "contempt" in names else 7
        super().__init__(names, num_classes, split=split, transform=transform, strict=strict, source=str(self.root))
        # native_names keep the folders' spelling (class_map applied): alphabetical folder order = native ids
        self.native_names = tuple(class_map.get(f, f) for f in folders)
        self.folders = tuple(folders)
        for native, folder in enumerate(folders):
            for dirpath, _, files in sorted(os.walk(self.root / folder)):
                for fn in sorted(files):
                    if fn.lower().endswith(extensions):
                        rel = os.path.relpath(os.path.join(dirpath, fn), self.root)
                        self._add_native(rel, native)
        self._finish()

    def load(self, key):
        return read_image(self.root / key)

    def describe(self, key) -> str:
        return str(Path(self.root) / key)
