"""Tiny files in each dataset's native format, written by the tests into tmp_path.

Images are solid colour: red = a per-sample tag, blue = 255, so a test can tell which file was read and that
the channels come back in RGB order (OpenCV writes BGR).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, tag: int, size: tuple[int, int] = (20, 16)) -> Path:
    """A solid RGB image (R = tag, G = 40, B = 255) of ``size`` = (h, w); format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*size, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = tag, 40, 255
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def tag_of(img) -> int:
    """The red value at the centre of a ``[3, H, W]`` tensor (the tag written by ``write_image``)."""
    assert img.shape[0] == 3 and int(img[2, img.shape[1] // 2, img.shape[2] // 2]) > 240, "channels not RGB"
    return int(img[0, img.shape[1] // 2, img.shape[2] // 2])


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pixels(value: int, n: int = 48 * 48) -> str:
    return " ".join([str(value)] * n)
