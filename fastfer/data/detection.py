"""Face detectors (all offline; nothing is downloaded): ``detector(image)`` → list of :class:`Face`, largest first.

- ``auto`` (default): MTCNN when facenet-pytorch imports, else Haar. facenet-pytorch that is installed but fails
  to import (a missing dependency, a broken install) is not silently skipped: a warning gives its real error.
- ``mtcnn``: MTCNN from ``facenet-pytorch`` (boxes + 5 landmarks + a score; its P/R/O-net weights ship in the
  wheel). facenet-pytorch 2.5.3 has no torch pin (2.6.0 pins ``torch<2.3``).
- ``haar``: OpenCV's frontal-face Haar cascade (inside ``opencv-python-headless>=4.8,<5``; OpenCV 5 dropped the
  cascades → a clear error), with false-positive filtering (:class:`HaarDetector`) and eye landmarks.
- ``none``: the caller gives boxes and/or landmarks, or the images already are face crops.

Large images are detected on a downscaled copy (longer side ``max_side``; boxes and landmarks are mapped back to
the full image): detection cost stays bounded (an 8000×6000 photo costs what a 1024×768 one does) and the face
crop is still cut from the full-resolution image.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fastfer.data.decode import OPENCV_HINT, as_rgb_uint8, import_cv2

DETECTORS = ("auto", "mtcnn", "haar", "none")
MTCNN_HINT = ("pip install facenet-pytorch==2.5.3  (2.6.0 pins torch<2.3; with a newer torch use "
              "pip install --no-deps facenet-pytorch==2.6.0)")


class DetectorNotInstalledError(ImportError):
    """An optional detector's package is not installed (as opposed to installed and failing to import)."""


@dataclass
class Face:
    """One detected (or given) face in image pixel coordinates.

    box: (x1, y1, x2, y2); landmarks: (5, 2) or (2, 2) array of (x, y) — eyes first, then nose and mouth
    corners — or None; score: detector confidence in [0, 1] when the detector gives one (MTCNN).
    """

    box: tuple[float, float, float, float]
    landmarks: Optional[np.ndarray] = None
    score: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def downscale(image: np.ndarray, max_side: Optional[int]) -> tuple[np.ndarray, float]:
    """(copy with longer side ≤ ``max_side``, scale = small / full); the image itself when it is small enough.
    INTER_AREA averages the pixels a small pixel covers (no aliasing; 8000×6000 → 1024: ~60 ms here)."""
    if not max_side or max(image.shape[:2]) <= max_side:
        return image, 1.0
    cv2 = import_cv2()
    scale = max_side / max(image.shape[:2])
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _scaled(face: Face, scale: float) -> Face:
    if scale == 1.0:
        return face
    box = tuple(float(v) / scale for v in face.box)
    landmarks = None if face.landmarks is None else np.asarray(face.landmarks, dtype=np.float64) / scale
    return Face(box, landmarks, face.score, face.extra)


def _overlap_of_smaller(a, b) -> float:
    """Intersection area / the smaller box's area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


# --- Haar -------------------------------------------------------------------------------------------------------


def import_cv2_haar():
    """``cv2`` with the Haar cascades (OpenCV 4.x), or RuntimeError with the fix (OpenCV 5 removed them)."""
    cv2 = import_cv2()
    if int(cv2.__version__.split(".")[0]) >= 5 or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(f"OpenCV {cv2.__version__} does not ship the Haar cascades (removed in OpenCV 5); "
                           f"{OPENCV_HINT}, or use detector='mtcnn' / 'none'")
    return cv2


def skin_fraction(rgb: np.ndarray, box) -> float:
    """Share of skin-coloured pixels in the middle of a face box (the cheeks, nose and mouth: x 20–80 %, y 25–85 %),
    by the YCrCb rule Cr 133–173, Cb 77–127 (Chai & Ngan 1999), which holds across skin tones."""
    cv2 = import_cv2()
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    w, h = x2 - x1, y2 - y1
    region = rgb[max(0, y1 + int(0.25 * h)):max(0, y1 + int(0.85 * h)), max(0, x1 + int(0.2 * w)):max(0, x2 - int(0.2 * w))]
    if region.size == 0:
        return 0.0
    ycc = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1], ycc[..., 2]
    return float(((cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)).mean())


def is_gray(rgb: np.ndarray) -> bool:
    """Whether an image carries (almost) no colour — a gray photo or an infrared frame, where skin colour says
    nothing."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 4096)))  # ~4k pixels are enough
    sample = rgb[::step, ::step].astype(np.int16)
    return float(np.abs(sample - sample.mean(axis=2, keepdims=True)).mean()) < 2.0


class HaarDetector:
    """OpenCV Haar cascade face detector with false-positive filtering and eye landmarks.

    A raw frontal-face cascade fires on clothing, hands and background (on the shared real photos: a patch of fur
    on ``johnsnow_test1.jpg``; on the clip: hands, a dress). A candidate is kept only if

    1. its centre is skin-coloured (:func:`skin_fraction` ≥ ``min_skin``; skipped on gray images), and
    2. either the cascade's own confidence (the last stage's level weight) is ≥ ``strong_weight`` (colour images
       only) or a second, differently trained cascade (``haarcascade_frontalface_alt2``) finds a face there too
       (IoU ≥ 0.5), run only on the neighbourhood of the candidate, and
    3. it does not sit mostly (> 50 %) inside a kept, stronger box.

    Args:
        scale_factor, min_neighbors: ``detectMultiScale`` settings (OpenCV's usual 1.1 and 5).
        min_size: smallest face side in pixels of the (possibly downscaled) image.
        max_side: images whose longer side exceeds this are detected on a downscaled copy.
        eyes: also run the eye cascade inside each face; two eyes (one per half of the box) give 2-point
            landmarks, otherwise the face has none and is aligned from its box.
        filter: apply the false-positive filter (False: every raw cascade detection).
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24, max_side: int = 640,
                 eyes: bool = True, filter: bool = True, min_skin: float = 0.4, strong_weight: float = 3.0):
        cv2 = import_cv2_haar()
        root = cv2.data.haarcascades
        self.faces = self._load(cv2, root + "haarcascade_frontalface_default.xml")
        self.verifier = self._load(cv2, root + "haarcascade_frontalface_alt2.xml") if filter else None
        self.eyes = self._load(cv2, root + "haarcascade_eye.xml") if eyes else None
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_side = min_size, max_side
        self.min_skin, self.strong_weight = min_skin, strong_weight

    @staticmethod
    def _load(cv2, path: str):
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"Haar cascade {path!r} is missing or unreadable; {OPENCV_HINT}")
        return cascade

    def __call__(self, image: np.ndarray) -> list[Face]:
        import cv2

        small, scale = downscale(as_rgb_uint8(image), self.max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        found, _, weights = self.faces.detectMultiScale3(gray, self.scale_factor, self.min_neighbors,
                                                         minSize=(self.min_size, self.min_size),
                                                         outputRejectLevels=True)
        boxes = np.asarray(found, dtype=np.int64).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        check_skin = self.verifier is not None and not is_gray(small)
        kept: list[Face] = []
        for i in np.argsort(-weights, kind="stable"):
            x, y, w, h = (int(v) for v in boxes[i])
            box = (float(x), float(y), float(x + w), float(y + h))
            if self.verifier is not None:
                if check_skin and skin_fraction(small, box) < self.min_skin:
                    continue
                strong = weights[i] >= self.strong_weight and check_skin  # gray: no skin test, always confirm
                if not strong and not self._confirmed(gray, x, y, w, h):
                    continue
                if any(_overlap_of_smaller(box, k.box) > 0.5 for k in kept):
                    continue
            eyes = self._eyes(gray, x, y, w, h) if self.eyes is not None else None
            kept.append(Face(box, eyes, None, {"haar_weight": round(float(weights[i]), 3)}))
        return sorted((_scaled(f, scale) for f in kept), key=lambda f: -f.area)

    def _confirmed(self, gray: np.ndarray, x: int, y: int, w: int, h: int) -> bool:
        """Whether the second cascade finds a face of about this size at about this place (IoU ≥ 0.5)."""
        pad = w // 3
        x0, y0 = max(0, x - pad), max(0, y - pad)
        region = gray[y0:y + h + pad, x0:x + w + pad]
        found = self.verifier.detectMultiScale(region, 1.1, 3, minSize=(int(0.6 * w),) * 2,
                                               maxSize=(int(1.6 * w) + 1,) * 2)
        for fx, fy, fw, fh in np.asarray(found).reshape(-1, 4):
            a, b = (x, y, x + w, y + h), (x0 + fx, y0 + fy, x0 + fx + fw, y0 + fy + fh)
            ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
            iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
            if ix * iy / (w * h + fw * fh - ix * iy) >= 0.5:
                return True
        return False

    def _eyes(self, gray: np.ndarray, x: int, y: int, w: int, h: int) -> Optional[np.ndarray]:
        """Eye centres (2, 2) from the eye cascade in the upper 60 % of the box, or None unless exactly one eye
        is found per half (the largest in each)."""
        region = gray[y:y + int(0.6 * h), x:x + w]
        found = self.eyes.detectMultiScale(region, 1.1, 5, minSize=(max(w // 10, 5),) * 2, maxSize=(w // 2,) * 2)
        left, right = [], []
        for ex, ey, ew, eh in np.asarray(found).reshape(-1, 4):
            cx, cy = x + ex + ew / 2, y + ey + eh / 2
            (left if cx < x + w / 2 else right).append((ew * eh, cx, cy))
        if not left or not right:
            return None
        return np.array([max(left)[1:], max(right)[1:]], dtype=np.float64)


# --- MTCNN ------------------------------------------------------------------------------------------------------


def import_mtcnn():
    """facenet-pytorch's ``MTCNN`` class. Not installed → ImportError with the install line; installed but
    failing to import → ImportError with that real error (chained), not an install hint."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        if getattr(exc, "name", None) == "facenet_pytorch":
            raise DetectorNotInstalledError(f"detector='mtcnn' needs facenet-pytorch, which is not installed: "
                                            f"{MTCNN_HINT}") from exc
        raise ImportError(f"detector='mtcnn': facenet-pytorch is installed but failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # a broken install can fail with anything at import time
        raise ImportError(f"detector='mtcnn': facenet-pytorch is installed but failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    return MTCNN


class MTCNNDetector:
    """MTCNN: boxes, 5 landmarks and a score per face — facenet-pytorch's networks, the cascade of
    :mod:`fastfer.data.mtcnn` (OpenCV resampling, batched crops: 3–5× faster than ``MTCNN.detect`` here).

    Args:
        device: where the three small networks run.
        min_face_size: smallest face side in pixels of the (possibly downscaled) detection image.
        min_score: detections below this confidence are dropped (0.9: MTCNN's clear faces score ≥ 0.95 on the
            shared real photos; blurred background faces 0.7–0.8).
        max_side: images whose longer side exceeds this are detected on a downscaled copy.
        min_skin, sure_score: a detection scoring below ``sure_score`` is kept only if its centre is
            skin-coloured (:func:`skin_fraction` ≥ ``min_skin``; skipped on gray images; None: off). MTCNN's false
            faces on the shared photos and clip score 0.88–0.97 with skin 0.02–0.55 (blurred background, hair, a
            hand); its real faces score ≥ 0.88 with skin ≥ 0.74.
        threads: torch CPU threads while detecting (None: leave as is). The three networks are tiny (10–128
            channels): a second thread gains nothing, and on a loaded 2-core machine every op then waits at an
            OpenMP barrier — P-Net on a 60×80 level took 0.7 ms with 1 thread, 130–190 ms with 2 (measured here,
            load average 3.9). The caller's thread count is restored afterwards.
    """

    name = "mtcnn"

    def __init__(self, device: str = "cpu", min_face_size: int = 20, min_score: float = 0.9, max_side: int = 1024,
                 threads: Optional[int] = 1, min_skin: Optional[float] = 0.6, sure_score: float = 0.99):
        MTCNN = import_mtcnn()
        import torch

        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)  # loads the P/R/O-Nets
        # channels-last weights: oneDNN runs P-Net's 10–32-channel convs 2.6× faster that way on this CPU
        # (614×439 level: 245 → 94 ms), and the crops arrive channels-last already (NHWC uint8 permuted)
        self.mtcnn.to(memory_format=torch.channels_last)
        self.device, self.min_face_size = device, min_face_size
        self.min_score, self.max_side, self.threads = min_score, max_side, threads
        self.min_skin, self.sure_score = min_skin, sure_score

    def __call__(self, image: np.ndarray) -> list[Face]:
        from fastfer.data import mtcnn

        import torch

        small, scale = downscale(as_rgb_uint8(image), self.max_side)
        threads = torch.get_num_threads()
        if self.threads and self.threads != threads:
            torch.set_num_threads(self.threads)
        try:
            boxes, scores, points = mtcnn.detect(small, self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet,
                                                 self.min_face_size, device=self.device)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        check_skin = self.min_skin is not None and not is_gray(small)
        faces = []
        for box, score, pts in zip(boxes, scores, points):
            if score < self.min_score:
                continue
            if check_skin and score < self.sure_score and skin_fraction(small, box) < self.min_skin:
                continue
            faces.append(_scaled(Face(tuple(float(v) for v in box), np.asarray(pts, dtype=np.float64),
                                      float(score)), scale))
        return sorted(faces, key=lambda f: -f.area)


def make_detector(detector="auto", device: str = "cpu"):
    """``auto`` | ``mtcnn`` | ``haar`` | ``none`` / None | a callable image → list[Face] (returned as is)."""
    if detector is None or detector == "none":
        return None
    if callable(detector):
        return detector
    if detector == "auto":
        try:
            return MTCNNDetector(device=device)
        except DetectorNotInstalledError:
            return HaarDetector()
        except ImportError as exc:  # installed but broken: say why instead of quietly detecting worse
            warnings.warn(f"detector='auto': {exc}; using the Haar detector instead", RuntimeWarning, stacklevel=2)
            return HaarDetector()
    if detector == "haar":
        return HaarDetector()
    if detector == "mtcnn":
        return MTCNNDetector(device=device)
    raise ValueError(f"detector: expected one of {DETECTORS} or a callable, got {detector!r}")


def detector_name(detector) -> str:
    """``mtcnn`` / ``haar`` / ``none`` / the callable's name — for reports."""
    if detector is None:
        return "none"
    return getattr(detector, "name", None) or getattr(detector, "__name__", type(detector).__name__)
