"""Procedural synthetic expression set: the built-in default data, so training runs anywhere.

Each sample is drawn on the fly by :func:`fastfer.data.synthetic_draw.draw_face` from a random generator seeded
with ``(seed, split, index)``: the same triple always gives the same image, the three splits never share a
seed, and nothing is stored. Labels cycle through the classes (``label = index % num_classes``), so every split
is balanced. This set checks that a pipeline learns; it says nothing about accuracy on real faces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from fastfer.data.base import to_chw_tensor
from fastfer.labels import label_names as _label_names
from fastfer.data.synthetic_draw import draw_face

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 7000, "val": 1400, "test": 1400}


def synthetic_image(seed: int, split: str, index: int, label: int, image_size: int = 112,
                    num_classes: int = 7, difficulty: float = 1.0) -> np.ndarray:
    """The RGB image ``[image_size, image_size, 3] uint8`` of sample ``index`` (a pure function of the inputs)."""
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    return draw_face(_label_names(num_classes)[label], rng, image_size, difficulty)


class SyntheticExpressions(Dataset):
    """Synthetic faces; ``__getitem__`` returns ``(image, label)``.

    ``image``: ``uint8 [3, image_size, image_size]`` RGB tensor, or ``transform(that tensor)`` when given.
    ``label``: canonical index (``fastfer.labels.EXPRESSIONS`` order).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of samples in this split (default ``DEFAULT_SIZES[split]``).
        seed: base seed; a different seed gives a different, equally distributed set.
        image_size: side in pixels (the drawing scales with it).
        num_classes: 7 (canonical seven) or 8 (adds contempt, drawn as a one-sided smirk).
        difficulty: 0 … 1, scales the nuisances (pose, clutter, occlusion, lighting, blur, noise) and the range of
            expression intensity; 1 (default) is the full mix, 0 gives clean frontal faces.
    """

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 112,
                 num_classes: int = 7, transform: Callable | None = None, difficulty: float = 1.0):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        size = DEFAULT_SIZES[split] if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size: expected an int ≥ 32, got {image_size!r}")
        if not 0.0 <= float(difficulty) <= 1.0:
            raise ValueError(f"difficulty: expected a value in [0, 1], got {difficulty!r}")
        self.split, self.size, self.seed, self.image_size = split, size, int(seed), image_size
        self.difficulty = float(difficulty)
        self.num_classes = num_classes
        self.label_names = _label_names(num_classes)
        self.native_names = self.label_names
        self.native_to_canonical = tuple(range(num_classes))
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [i % self.num_classes for i in range(self.size)]

    def summary(self) -> dict:
        counts = np.bincount(self.targets, minlength=self.num_classes).tolist()
        return {"dataset": "synthetic", "split": self.split, "seed": self.seed, "difficulty": self.difficulty,
                "kept": self.size, "class_counts": dict(zip(self.label_names, counts)), "dropped": {}, "corrupt": 0}

    def __len__(self) -> int:
        return self.size

    def image(self, index: int) -> np.ndarray:
        """RGB ``[H, W, 3] uint8`` numpy image of sample ``index``."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a split of size {self.size}")
        index %= self.size
        return synthetic_image(self.seed, self.split, index, index % self.num_classes, self.image_size,
                               self.num_classes, self.difficulty)

    def __getitem__(self, index: int):
        img = to_chw_tensor(self.image(index))
        if self.transform is not None:
            img = self.transform(img)
        return img, (index % self.size) % self.num_classes


def contact_sheet(per_class: int = 8, seed: int = 0, split: str = "train", image_size: int = 112,
                  num_classes: int = 7, label_width: int = 90, difficulty: float = 1.0) -> np.ndarray:
    """One row per class (name on the left), ``per_class`` examples each; RGB ``uint8 [H, W, 3]``."""
    import cv2

    ds = SyntheticExpressions(split, size=per_class * num_classes, seed=seed, image_size=image_size,
                              num_classes=num_classes, difficulty=difficulty)
    rows = []
    for c, name in enumerate(ds.label_names):
        tag = np.full((image_size, label_width, 3), 255, np.uint8)
        cv2.putText(tag, name, (4, image_size // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles = [ds.image(c + k * num_classes) for k in range(per_class)]
        rows.append(np.concatenate([tag] + tiles, axis=1))
    return np.concatenate(rows, axis=0)


def save_contact_sheet(path: str | Path, **kwargs) -> Path:
    """Write :func:`contact_sheet` as a PNG (keyword arguments as there); returns the path."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), contact_sheet(**kwargs)[..., ::-1]):
        raise OSError(f"could not write the contact sheet to {path}")
    return path
