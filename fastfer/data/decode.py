"""Decoding inference inputs to RGB ``uint8`` (H, W, 3) arrays: files, PIL images, numpy arrays, torch tensors.

What each input becomes (and what is refused, with an error naming the item, the expected and the actual):

- **Paths**: decoded by OpenCV (``cv2.imdecode``, the same decoder the dataset readers use): EXIF orientation is
  applied, 16-bit files are scaled to 8 bits, gray and palette images are expanded, CMYK JPEGs converted, alpha
  is dropped. A file OpenCV cannot decode is tried with Pillow before it is reported. Missing →
  ``FileNotFoundError``; undecodable → :class:`fastfer.data.base.CorruptImageError` (an ``OSError``).
- **PIL images**: turned upright by their EXIF orientation (like the same file given as a path); 16-bit modes
  (``I;16*``, ``I``) are scaled from 0..65535 (``convert("RGB")`` would clip them to white), ``F`` (float) follows
  the float rule below, ``1`` / ``L`` / ``P`` / ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` are converted to RGB,
  alpha is dropped.
- **Arrays and tensors**: numpy (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; torch (H, W) or (C, H, W)
  with C in 1, 3, 4 (on any device). ``uint8`` is taken as is, ``uint16`` is scaled from 0..65535, floats must
  lie in [0, 1] — a float array outside it (e.g. 0..255 values) is an error unless ``value_range=(lo, hi)`` says
  what it holds; other integer types need ``value_range``. NaN / inf are errors.

OpenCV frames are BGR: convert them (``cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)``) before passing them as arrays.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from fastfer.data.base import CorruptImageError

OPENCV_HINT = "pip install 'opencv-python-headless>=4.8,<5'"
# float inputs may overshoot [0, 1] by half a grey level (resampling, rounding) before it is called an error
_FLOAT_SLACK = 0.5 / 255.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def import_cv2():
    """The ``cv2`` module, or an ImportError that says what to install (the real import error chained)."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(f"OpenCV is needed for reading images and face detection ({exc}): {OPENCV_HINT}") from exc
    return cv2


def _is_pil(image) -> bool:
    return hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size")


def _is_tensor(image) -> bool:
    return hasattr(image, "detach") and hasattr(image, "dim")


def check_value_range(value_range, name: str = "value_range") -> Optional[tuple[float, float]]:
    """None or a (lo, hi) pair of finite numbers with lo < hi; ValueError naming ``name`` otherwise."""
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected None or (lo, hi), got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{name}: expected finite (lo, hi) with lo < hi, got {value_range!r}")
    return lo, hi


def _scale_to_uint8(image: np.ndarray, name: str, value_range) -> np.ndarray:
    """A non-uint8 array → uint8 by its value range (see the module docstring)."""
    kind = image.dtype
    if value_range is None:
        if kind == np.uint16:
            value_range = (0.0, 65535.0)
        elif np.issubdtype(kind, np.floating):
            value_range = (0.0, 1.0)
        elif kind == np.bool_:
            raise TypeError(f"{name}: expected dtype uint8 (0–255), uint16 (0–65535) or float (0–1), got bool")
        else:
            raise TypeError(f"{name}: expected dtype uint8 (0–255), uint16 (0–65535) or float (0–1), got {kind}; "
                            f"pass value_range=(lo, hi) to say what its values mean")
    lo, hi = check_value_range(value_range)
    values = image.astype(np.float32 if image.dtype.itemsize <= 4 else np.float64)
    if values.size:
        vmin, vmax = float(np.min(values)), float(np.max(values))
        if not (np.isfinite(vmin) and np.isfinite(vmax)):
            raise ValueError(f"{name}: expected finite pixel values, got NaN or inf")
        slack = _FLOAT_SLACK * (hi - lo)
        if vmin < lo - slack or vmax > hi + slack:
            hint = (" (it looks like 0–255 values: pass value_range=(0, 255))" if (lo, hi) == (0.0, 1.0) and
                    vmax <= 255.5 and vmin >= -0.5 else " (pass value_range=(lo, hi) to say what it holds)")
            raise ValueError(f"{name}: expected {kind} values in [{lo:g}, {hi:g}], got min {vmin:g}, max {vmax:g}"
                             f"{hint}")
    scaled = (values - lo) * (255.0 / (hi - lo))
    return (np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def _from_pil(image, name: str, value_range) -> np.ndarray:
    from PIL import ImageOps

    try:
        image = ImageOps.exif_transpose(image)  # a copy turned upright; the orientation tag is dropped
    except Exception as exc:  # a broken EXIF block should not hide the picture
        import warnings

        warnings.warn(f"{name}: cannot read its EXIF orientation ({exc}); used as stored", RuntimeWarning,
                      stacklevel=4)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_to_uint8(np.asarray(image).astype(np.uint16 if mode != "I" else np.int64), name,
                               value_range or (0.0, 65535.0))
    if mode == "F":
        return _scale_to_uint8(np.asarray(image), name, value_range)
    if mode in ("RGB", "L"):
        return np.asarray(image)
    if mode in ("P", "PA"):  # palette (with transparency → RGBA first, the way Pillow advises), alpha dropped
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _from_tensor(image, name: str) -> np.ndarray:
    t = image.detach()
    if t.dim() == 3 and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)
    elif t.dim() != 2:
        raise TypeError(f"{name}: expected a (3, H, W), (1, H, W), (4, H, W) or (H, W) tensor, got shape "
                        f"{tuple(image.shape)}")
    if t.dtype.is_floating_point and t.element_size() < 4:
        t = t.float()  # bf16 has no numpy twin
    return t.cpu().numpy()


def as_rgb_uint8(image, name: str = "image", value_range=None) -> np.ndarray:
    """One in-memory image (PIL image, numpy array or torch tensor; see the module docstring) → RGB uint8
    (H, W, 3), contiguous. ``name`` is used in errors (``images[3]``); ``value_range=(lo, hi)``: what a non-uint8
    array's values span (default: uint16 0..65535, float 0..1)."""
    if _is_pil(image):
        image = _from_pil(image, name, value_range)
    elif _is_tensor(image):
        image = _from_tensor(image, name)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a path, numpy array, PIL image or torch tensor, got "
                        f"{type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise TypeError(f"{name}: expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.dtype != np.uint8:
        image = _scale_to_uint8(image, name, value_range)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def read_image(path, name: Optional[str] = None) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) (see the module docstring). Missing → FileNotFoundError;
    undecodable → :class:`CorruptImageError`; both name the path."""
    path = os.fspath(path)
    where = name or path
    at = f" at {path!r}" if name and name != path else ""
    if not os.path.isfile(path):
        found = "a folder" if os.path.isdir(path) else "nothing"
        raise FileNotFoundError(f"{where}: expected an image file, found {found}{at}")
    cv2 = import_cv2()
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode: non-ASCII paths work
    except OSError as exc:
        raise CorruptImageError(f"{where}: cannot read the file{at}: {exc.strerror or exc}") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:  # formats OpenCV was built without
        from PIL import Image

        with Image.open(path) as pil:
            pil.load()
            return as_rgb_uint8(pil, where)
    except Exception as exc:  # Pillow raises many types for a bad file
        raise CorruptImageError(f"{where}: cannot decode it{at} ({data.size} bytes): expected an image file "
                                f"OpenCV or Pillow can read ({type(exc).__name__}: {exc})") from None


def load_image(image, name: str = "image", value_range=None) -> np.ndarray:
    """A path (str / PathLike) or an in-memory image → RGB uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, name if name != "image" else None)
    return as_rgb_uint8(image, name, value_range)


def describe(image, index: int, names: Optional[Sequence[str]] = None) -> str:
    """How errors name item ``index``: the caller's name, the path, else ``images[i]``."""
    if names is not None:
        return str(names[index])
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"images[{index}]"
