"""ExpW (Expression in-the-Wild) reader (``docs/datasets.md`` §8): faces cut from scene images on load.

Layout: ``image/origin/<image>.jpg`` (full scenes) and ``label/label.lst``, one face per line::

    image_name face_id face_box_top face_box_left face_box_right face_box_bottom face_box_cofidence label

**Box order is top, left, right, bottom**; the face is ``img[top:bottom, left:right]`` (clipped to the image).
Labels are in FER2013 order (0 angry … 6 neutral). ``min_conf`` drops faces with a lower box confidence (some
scripts use 80); they are counted in ``summary()["dropped"]``.

ExpW has no official split: ``split`` in ``train`` / ``val`` / ``test`` takes a seeded split **by image** (all
faces of one scene stay together) with ``fractions``; ``split="all"`` reads every face.
:meth:`ExpW.split_record` returns what is needed to reproduce it.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from fastfer.data.base import CorruptImageError, DatasetFormatError, FERDataset, read_image, require_dir, require_file
from fastfer.data.textfile import parse_int, read_lines
from fastfer.labels import NATIVE_ORDERS

SPLITS = ("train", "val", "test", "all")


def _image_split(names: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Assign each distinct image name to train / val / test by a seeded permutation of the sorted names."""
    unique = sorted(set(names))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    out = {}
    for rank, i in enumerate(order):
        out[unique[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


class ExpW(FERDataset):
    """ExpW, 7 classes. ``dataset[i]`` → ``(uint8 [3, h, w] RGB face crop, canonical label)``."""

    dataset_name = "ExpW"

    def __init__(self, root: str | os.PathLike, split: str = "train", min_conf: float = 0.0,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                 transform: Callable | None = None, strict: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions: expected three non-negative (train, val, test) fractions summing to 1, "
                             f"got {fractions!r}")
        root = require_dir(root, "ExpW root")
        label_file = require_file(root / "label" / "label.lst", "ExpW label file")
        self.image_dir = require_dir(root / "image" / "origin", "ExpW images")
        super().__init__(NATIVE_ORDERS["expw"], 7, split=split, transform=transform, strict=strict,
                         source=str(label_file))
        self.min_conf, self.fractions, self.seed = float(min_conf), tuple(fractions), int(seed)
        faces = []
        for line, text in read_lines(label_file, "ExpW label file"):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 8:
                raise DatasetFormatError(label_file, line, "expected 8 fields (image face_id top left right "
                                                           f"bottom confidence label), got {len(parts)}")
            try:
                top, left, right, bottom = (int(float(v)) for v in parts[2:6])
                conf = float(parts[6])
            except ValueError:
                raise DatasetFormatError(label_file, line, f"expected numeric box and confidence, got "
                                                           f"{' '.join(parts[2:7])!r}") from None
            label = parse_int(parts[7], label_file, line, "a label", 0, 6, column=8)
            if bottom <= top or right <= left or top < 0 or left < 0:
                raise DatasetFormatError(label_file, line, f"expected a box with 0 ≤ top < bottom and 0 ≤ left "
                                                           f"< right (order top, left, right, bottom), got "
                                                           f"{top} {left} {right} {bottom}")
            faces.append((parts[0], (top, left, right, bottom), conf, label))
        assign = _image_split([f[0] for f in faces], self.fractions, self.seed) if split != "all" else {}
        self.images_in_split = sorted({f[0] for f in faces if split == "all" or assign[f[0]] == split})
        for name, box, conf, native in faces:
            if split != "all" and assign[name] != split:
                continue
            if conf < self.min_conf:
                self._drop(f"box confidence below min_conf={self.min_conf:g}")
                continue
            self._add_native((name, box), native)
        self._finish()

    def split_record(self) -> dict:
        """How this split was made (seed, fractions, min_conf, image count): store it with a training run."""
        return {"dataset": "ExpW", "split": self.split, "seed": self.seed, "fractions": list(self.fractions),
                "min_conf": self.min_conf, "images": len(self.images_in_split), "faces": len(self)}

    def load(self, key):
        name, (top, left, right, bottom) = key
        img = read_image(self.image_dir / name)
        h, w = img.shape[:2]
        crop = img[max(0, top):min(h, bottom), max(0, left):min(w, right)]
        if crop.size == 0:
            raise CorruptImageError(f"face box top={top} left={left} right={right} bottom={bottom} lies outside "
                                    f"image {self.image_dir / name} of size {w}×{h}")
        return crop

    def describe(self, key) -> str:
        return f"{self.image_dir / key[0]} box {key[1]}"
