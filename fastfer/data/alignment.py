"""Face alignment: warp each face onto a fixed 5-point template and crop it to the model's input size.

The face.evoLVe / MTCNN preprocessing APViT's training data went through: a least-squares similarity transform
(rotation + uniform scale + translation, no shear or reflection; Umeyama 1991) maps the 5 detected landmarks —
left eye, right eye, nose tip, left and right mouth corner, "left" meaning the smaller image x — onto
:data:`TEMPLATE_96x112`, the mean landmark positions of the 96×112 face crops published with SphereFace and used
by face.evoLVe / ArcFace. Square crops pad the 96-pixel width to the height, centred (x + 8 for 112×112), and
other sizes scale the 112×112 template (:func:`reference_points`). With only the two eye centres the similarity
is fitted to the template's two eyes (exact). With a box and no landmarks, eye positions are estimated from the
box (:data:`BOX_EYES`) and the 2-point path is used — an approximation.

A face here is anything with ``box`` (x1, y1, x2, y2) and ``landmarks`` ((5, 2), (2, 2) or None) attributes —
:class:`fastfer.data.detection.Face`. Images are RGB ``uint8`` numpy arrays (H, W, 3).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from fastfer.data.decode import import_cv2

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


def alignment_matrix(face, size: Sequence[int]) -> tuple[np.ndarray, str]:
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


def align_face(image: np.ndarray, face, size: Union[int, Sequence[int]] = 112) -> tuple[np.ndarray, str]:
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
