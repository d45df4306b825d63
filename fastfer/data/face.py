"""Faces for inference: detection (:mod:`.detection`), alignment (:mod:`.alignment`), input decoding
(:mod:`.decode`) and the policies for images without exactly one face — this module gathers them, so
``from fastfer.data import face`` gives the whole toolbox.

**Policies** (what happens when detection does not give exactly one face; explicit, never silent):

- ``no_face``: ``skip`` (default) — the image gets an empty face list (reported per image); ``full`` — the whole
  image is taken as one face crop (resized, not aligned); ``error`` — raise :class:`NoFaceError`.
- ``multi_face``: ``all`` (default) — every face; ``largest`` — only the largest box; ``error`` — raise
  :class:`MultipleFacesError`.

Images here are RGB ``uint8`` numpy arrays (H, W, 3).
"""
from __future__ import annotations

import numpy as np

from fastfer.data.alignment import (  # noqa: F401 — re-exported
    BOX_EYES,
    TEMPLATE_96x112,
    align_face,
    alignment_matrix,
    apply_transform,
    box_landmarks,
    reference_points,
    resize_face,
    similarity_transform,
)
from fastfer.data.decode import OPENCV_HINT, as_rgb_uint8, import_cv2, load_image, read_image  # noqa: F401
from fastfer.data.detection import (  # noqa: F401
    DETECTORS,
    MTCNN_HINT,
    DetectorNotInstalledError,
    Face,
    HaarDetector,
    MTCNNDetector,
    detector_name,
    downscale,
    import_cv2_haar,
    import_mtcnn,
    make_detector,
)

__all__ = [  # the gathered toolbox, so `from fastfer.data import face as F; F.HaarDetector` keeps working
    "BOX_EYES", "DETECTORS", "MTCNN_HINT", "MULTI_FACE_POLICIES", "NO_FACE_POLICIES", "OPENCV_HINT",
    "TEMPLATE_96x112", "DetectorNotInstalledError", "Face", "HaarDetector", "MTCNNDetector", "MultipleFacesError",
    "NoFaceError", "align_face", "alignment_matrix", "apply_policies", "apply_transform", "as_rgb_uint8",
    "box_landmarks", "check_policies", "detector_name", "downscale", "faces_from_arguments", "import_cv2",
    "import_cv2_haar", "import_mtcnn", "load_image", "make_detector", "read_image", "reference_points",
    "resize_face", "similarity_transform",
]

NO_FACE_POLICIES = ("skip", "full", "error")
MULTI_FACE_POLICIES = ("all", "largest", "error")


class NoFaceError(RuntimeError):
    """Detection found no face and the policy is ``no_face="error"``."""


class MultipleFacesError(RuntimeError):
    """Detection found several faces and the policy is ``multi_face="error"``."""


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
