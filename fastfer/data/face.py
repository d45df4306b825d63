"""Face detection and alignment for inference: find faces, warp each onto a fixed 5-point template, crop to the
model's input size.

**Detectors** (all offline; nothing is downloaded):

- ``haar`` (default): OpenCV's frontal-face Haar cascade, shipped inside ``opencv-python-headless>=4.8,<5``
  (``cv2.data.haarcascades``), plus the eye cascade inside each face for two landmarks. OpenCV 5 no longer ships
  the cascades (nor ``cv2.CascadeClassifier``): a clear error tells you to install ``opencv-python-headless<5``.
- ``mtcnn``: MTCNN from ``facenet-pytorch`` (boxes + 5 landmarks; its P/R/O-net weights ship in the wheel).
  Optional: ``pip install facenet-pytorch==2.5.3`` — 2.6.0 pins ``torch<2.3``; to use 2.6.0 with a newer torch,
  ``pip install --no-deps facenet-pytorch==2.6.0``.
- ``none``: the caller gives boxes and/or landmarks, or the images already are face crops.

**Alignment** (the face.evoLVe / MTCNN preprocessing APViT's training data went through, ``apvit.md`` §12): a
least-squares similarity transform (rotation + uniform scale + translation, no shear or reflection; Umeyama 1991)
maps the 5 detected landmarks — left eye, right eye, nose tip, left and right mouth corner, "left" meaning the
smaller image x — onto :data:`TEMPLATE_96x112`, the mean landmark positions of the 96×112 face crops published
with SphereFace and used by face.evoLVe / ArcFace. Square crops pad the 96-pixel width to the height, centred
(x + 8 for 112×112), and other sizes scale the 112×112 template (:func:`reference_points`). With only the two eye
centres the similarity is fitted to the template's two eyes (exact). With a box and no landmarks, eye positions
are estimated from the box (:data:`BOX_EYES`) and the 2-point path is used — an approximation.

**Policies** (what happens when detection does not give exactly one face; explicit, never silent):

- ``no_face``: ``skip`` (default) — the image gets an empty face list (reported per image); ``full`` — the whole
  image is taken as one face crop (resized, not aligned); ``error`` — raise :class:`NoFaceError`.
- ``multi_face``: ``all`` (default) — every face; ``largest`` — only the largest box; ``error`` — raise
  :class:`MultipleFacesError`.

Images here are RGB ``uint8`` numpy arrays (H, W, 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

# Mean landmark positions (x, y) in a 96×112 (width × height) face crop: left eye, right eye, nose tip,
# left mouth corner, right mouth corner — the published SphereFace / face.evoLVe reference points.
TEMPLATE_96x112 = np.array([
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
], dtype=np.float64)

# Where the eye centres sit inside a Haar frontal-face box, as fractions of its width / height (left, right).
# Measured on scikit-image's astronaut photograph (box 95 px; eye cascade centres at x 0.263 / 0.737, y 0.37 /
# 0.39 of the box) and symmetrised; used only when a face comes with a box and no landmarks.
BOX_EYES = np.array([[0.265, 0.38], [0.735, 0.38]], dtype=np.float64)

NO_FACE_POLICIES = ("skip", "full", "error")
MULTI_FACE_POLICIES = ("all", "largest", "error")
DETECTORS = ("haar", "mtcnn", "none")

OPENCV_HINT = "pip install 'opencv-python-headless>=4.8,<5'"
MTCNN_HINT = ("pip install facenet-pytorch==2.5.3  (2.6.0 pins torch<2.3; with a newer torch use "
              "pip install --no-deps facenet-pytorch==2.6.0)")


class NoFaceError(RuntimeError):
    """Detection found no face and the policy is ``no_face="error"``."""


class MultipleFacesError(RuntimeError):
    """Detection found several faces and the policy is ``multi_face="error"``."""


@dataclass
class Face:
    """One detected (or given) face in image pixel coordinates.

    box: (x1, y1, x2, y2); landmarks: (5, 2) or (2, 2) array of (x, y) — eyes first, then nose and mouth
    corners — or None; score: detector confidence when the detector gives one.
    """

    box: tuple[float, float, float, float]
    landmarks: Optional[np.ndarray] = None
    score: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


# --- images -----------------------------------------------------------------------------------------------------


def import_cv2(haar: bool = False):
    """The ``cv2`` module, or an ImportError that says what to install. ``haar=True`` also requires the Haar
    cascades (OpenCV 4.x): OpenCV 5 removed them and ``cv2.CascadeClassifier`` → RuntimeError with the fix."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(f"OpenCV is needed for reading images and face detection: {OPENCV_HINT}") from exc
    if haar and (int(cv2.__version__.split(".")[0]) >= 5 or not hasattr(cv2, "CascadeClassifier")):
        raise RuntimeError(f"OpenCV {cv2.__version__} does not ship the Haar cascades (removed in OpenCV 5); "
                           f"{OPENCV_HINT}, or use detector='mtcnn' / 'none'")
    return cv2


def as_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from: a numpy array (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or float
    in [0, 1]; a PIL image; a torch tensor (3, H, W) uint8 or float in [0, 1]. Raises TypeError naming ``name``."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        image = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach"):  # torch.Tensor (C, H, W)
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise TypeError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a path, numpy array, PIL image or torch tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise TypeError(f"{name}: expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"{name}: expected dtype uint8 (0–255) or float (0–1), got {image.dtype}")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def read_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3). A missing file → FileNotFoundError; an undecodable one →
    :class:`fastfer.data.base.CorruptImageError` (an OSError); both name the path."""
    import os

    from fastfer.data.base import read_image as decode

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image: no such file {path!r}")
    return decode(path)


# --- alignment --------------------------------------------------------------------------------------------------


def reference_points(size: Union[int, Sequence[int]] = 112, num_points: int = 5) -> np.ndarray:
    """The template landmarks (num_points, 2) for an output crop of ``size`` = S or (H, W) pixels.

    (H, W) = (112, 96) gives :data:`TEMPLATE_96x112` unchanged; every other size uses the square 112×112
    template (96-wide template shifted right by 8 px) scaled by min(H, W) / 112 and centred. ``num_points`` 2
    returns the two eyes.
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if (h, w) == (112, 96):
        points = TEMPLATE_96x112.copy()
    else:
        square = TEMPLATE_96x112 + np.array([8.0, 0.0])
        scale = min(h, w) / 112.0
        points = square * scale + np.array([(w - 112.0 * scale) / 2, (h - 112.0 * scale) / 2])
    if num_points not in (2, 5):
        raise ValueError(f"num_points: expected 2 (eyes) or 5, got {num_points!r}")
    return points[:num_points]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst.

    src, dst: (N, 2) point sets, N ≥ 2. Returns the (2, 3) affine matrix A with dst ≈ A @ [x, y, 1] (Umeyama's
    closed form: SVD of the cross-covariance, reflection removed by flipping the last singular vector's sign).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"landmarks: expected matching (N, 2) point sets with N ≥ 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("landmarks: the points coincide; cannot fit a similarity transform")
    U, S, Vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])
    R = U @ sign @ Vt
    scale = np.trace(np.diag(S) @ sign) / var_s
    t = mu_d - scale * R @ mu_s
    return np.hstack([scale * R, t[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(2, 3) affine matrix applied to (N, 2) points → (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def box_landmarks(box: Sequence[float]) -> np.ndarray:
    """Estimated eye centres (2, 2) of a face box (x1, y1, x2, y2), from :data:`BOX_EYES`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([x1, y1]) + BOX_EYES * np.array([x2 - x1, y2 - y1])


def alignment_matrix(face: Face, size: Sequence[int]) -> tuple[np.ndarray, str]:
    """(2, 3) matrix from image pixels to the (H, W) crop and how it was found: ``5-point``, ``2-point`` or
    ``box``."""
    if face.landmarks is not None:
        points = np.asarray(face.landmarks, dtype=np.float64)
        if points.shape not in ((5, 2), (2, 2)):
            raise ValueError(f"landmarks: expected a (5, 2) or (2, 2) array of (x, y), got shape {points.shape}")
        n = points.shape[0]
        return similarity_transform(points, reference_points(size, n)), f"{n}-point"
    x1, y1, x2, y2 = face.box
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box: expected (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {face.box}")
    return similarity_transform(box_landmarks(face.box), reference_points(size, 2)), "box"


def align_face(image: np.ndarray, face: Face, size: Union[int, Sequence[int]] = 112) -> tuple[np.ndarray, str]:
    """Warp one face onto the template: image RGB uint8 (H, W, 3) → crop (h, w, 3) uint8 and the alignment kind.

    Bilinear sampling; pixels outside the image are black (as in face.evoLVe's warp).
    """
    cv2 = import_cv2()
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    matrix, kind = alignment_matrix(face, (h, w))
    crop = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))
    return crop, kind


def resize_face(image: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """A face crop resized to (h, w) without alignment (bilinear, like the test-time transforms)."""
    cv2 = import_cv2()
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


# --- detectors --------------------------------------------------------------------------------------------------


class HaarDetector:
    """OpenCV Haar cascade face detector with eye landmarks.

    Args:
        scale_factor, min_neighbors: ``detectMultiScale`` settings (OpenCV's usual 1.1 and 5).
        min_size: smallest face side in pixels of the (possibly downscaled) image.
        max_side: images whose longer side exceeds this are downscaled for detection (speed; boxes are scaled back).
        eyes: also run the eye cascade inside each face; two eyes (one per half of the box) give 2-point
            landmarks, otherwise the face has none and is aligned from its box.

    ``detector(image)``: RGB uint8 (H, W, 3) → list of :class:`Face`, largest first.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24, max_side: int = 640,
                 eyes: bool = True):
        cv2 = import_cv2(haar=True)
        root = cv2.data.haarcascades
        self.faces = self._load(cv2, root + "haarcascade_frontalface_default.xml")
        self.eyes = self._load(cv2, root + "haarcascade_eye.xml") if eyes else None
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_side = min_size, max_side

    @staticmethod
    def _load(cv2, path: str):
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"Haar cascade {path!r} is missing or unreadable; {OPENCV_HINT}")
        return cascade

    def __call__(self, image: np.ndarray) -> list[Face]:
        import cv2

        image = as_rgb_uint8(image)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        found = self.faces.detectMultiScale(gray, self.scale_factor, self.min_neighbors,
                                            minSize=(self.min_size, self.min_size))
        faces = []
        for x, y, w, h in np.asarray(found).reshape(-1, 4):
            eyes = self._eyes(gray, x, y, w, h) if self.eyes is not None else None
            box = tuple(float(v) / scale for v in (x, y, x + w, y + h))
            faces.append(Face(box, None if eyes is None else eyes / scale))
        return sorted(faces, key=lambda f: -f.area)

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


class MTCNNDetector:
    """MTCNN (facenet-pytorch) boxes + 5 landmarks. ``detector(image)``: RGB uint8 (H, W, 3) → faces, largest
    first. ``min_score`` drops detections below that confidence."""

    def __init__(self, device: str = "cpu", min_face_size: int = 20, min_score: float = 0.9):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ImportError(f"detector='mtcnn' needs facenet-pytorch: {MTCNN_HINT}") from exc
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self.min_score = min_score

    def __call__(self, image: np.ndarray) -> list[Face]:
        image = as_rgb_uint8(image)
        boxes, scores, points = self.mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = [Face(tuple(float(v) for v in box), np.asarray(pts, dtype=np.float64), float(score))
                 for box, score, pts in zip(boxes, scores, points) if score >= self.min_score]
        return sorted(faces, key=lambda f: -f.area)


def make_detector(detector, device: str = "cpu"):
    """``haar`` | ``mtcnn`` | ``none`` / None | a callable image → list[Face] (returned as is)."""
    if detector is None or detector == "none":
        return None
    if callable(detector):
        return detector
    if detector == "haar":
        return HaarDetector()
    if detector == "mtcnn":
        return MTCNNDetector(device=device)
    raise ValueError(f"detector: expected one of {DETECTORS} or a callable, got {detector!r}")


def check_policies(no_face: str, multi_face: str) -> None:
    """ValueError naming the argument unless both policies are known."""
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"no_face: expected one of {NO_FACE_POLICIES}, got {no_face!r}")
    if multi_face not in MULTI_FACE_POLICIES:
        raise ValueError(f"multi_face: expected one of {MULTI_FACE_POLICIES}, got {multi_face!r}")


def apply_policies(faces: list[Face], no_face: str, multi_face: str, where: str = "image") -> list[Face]:
    """Apply the multi-face policy (``all`` / ``largest`` / ``error``) and the error branch of the no-face
    policy; ``skip`` / ``full`` for an empty list are handled by the caller."""
    check_policies(no_face, multi_face)
    if not faces and no_face == "error":
        raise NoFaceError(f"{where}: no face found (no_face='error'; use 'skip' or 'full' to go on)")
    if len(faces) > 1:
        if multi_face == "error":
            raise MultipleFacesError(f"{where}: {len(faces)} faces found (multi_face='error'; use 'all' or "
                                     f"'largest')")
        if multi_face == "largest":
            return [max(faces, key=lambda f: f.area)]
    return faces


def faces_from_arguments(boxes=None, landmarks=None, where: str = "image") -> list[Face]:
    """Caller-given faces of one image: ``boxes`` (F, 4) x1, y1, x2, y2 and/or ``landmarks`` (F, 5|2, 2)."""
    box_arr = None
    if boxes is not None:
        box_arr = np.asarray(boxes, dtype=np.float64)
        if box_arr.ndim == 1 and box_arr.size == 4:
            box_arr = box_arr[None]
        if box_arr.size == 0:
            box_arr = box_arr.reshape(0, 4)
        if box_arr.ndim != 2 or box_arr.shape[1] != 4:
            raise ValueError(f"boxes ({where}): expected (F, 4) boxes x1, y1, x2, y2, got shape {box_arr.shape}")
    lm_arr = None
    if landmarks is not None:
        lm_arr = np.asarray(landmarks, dtype=np.float64)
        if lm_arr.ndim == 2:
            lm_arr = lm_arr[None]
        if lm_arr.size and (lm_arr.ndim != 3 or lm_arr.shape[1:] not in ((5, 2), (2, 2))):
            raise ValueError(f"landmarks ({where}): expected (F, 5, 2) or (F, 2, 2) per image, got shape "
                             f"{np.asarray(landmarks).shape}")
    if box_arr is not None and lm_arr is not None and len(box_arr) != len(lm_arr):
        raise ValueError(f"boxes/landmarks ({where}): expected as many boxes as landmark sets, got "
                         f"{len(box_arr)} and {len(lm_arr)}")
    if box_arr is None and lm_arr is None:
        return []
    n = len(box_arr) if box_arr is not None else len(lm_arr)
    faces = []
    for i in range(n):
        lm = None if lm_arr is None else lm_arr[i]
        if box_arr is not None:
            box = tuple(float(v) for v in box_arr[i])
            if not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"boxes ({where}): expected x1 < x2 and y1 < y2, got {box}")
        else:  # box around the landmarks, padded by half their spread
            lo, hi = lm.min(0), lm.max(0)
            pad = 0.5 * (hi - lo).max()
            box = (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad)
        faces.append(Face(box, lm))
    return faces
