"""SFEW 2.0 reader (``docs/datasets.md`` §7): ``{Train,Val}/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*``.

Folders are mapped by name, not by their alphabetical position (which would swap neutral and sad relative to
FER2013). Test labels are not public, so the splits are ``train`` and ``val``. Frames come from movies: faces
still need detection and alignment, which belongs to the model's preprocessing, not to this reader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from fastfer.data.base import require_dir
from fastfer.data.folder import ImageFolderFER

SPLITS = ("train", "val")


class SFEW(ImageFolderFER):
    """SFEW 2.0, 7 classes. ``dataset[i]`` → ``(uint8 [3, H, W] RGB, canonical label)``."""

    dataset_name = "SFEW"

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 strict: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS} (SFEW test labels are not public), got {split!r}")
        root = require_dir(root, "SFEW root")
        # the release spells the split folders Train / Val; accept any capitalisation
        matches = [p for p in Path(root).iterdir() if p.is_dir() and p.name.lower() == split]
        if not matches:
            raise FileNotFoundError(f"SFEW root {root}: expected a {split.capitalize()}/ folder of class folders")
        super().__init__(matches[0], num_classes=7, transform=transform, strict=strict, split=split)
