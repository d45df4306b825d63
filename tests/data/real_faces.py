"""The shared real photographs and clip (``../shared/data/faces`` beside the repository; tests skip where it is
absent, as on a user's clone; ``FASTFER_FACES_DIR`` overrides the place) and the per-shot face counts of the clip.

``faces.json`` gives the clip one range for every frame, ``faces_per_frame`` [1, 2] ("a singer and a pianist").
That holds for the first shot and the singer's shot only. Looked at frame by frame (shot cuts found by a mean
frame difference > 25 grey levels at 64×36), the clip has five shots; :data:`CLIP_SHOTS` gives what a person sees
in each — the last shot shows four people in the audience clearly (MTCNN finds the same four at 0.92–1.00), the
third only blurred background faces.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# beside the repository; FASTFER_FACES_DIR points elsewhere (a git worktree that is not beside shared/)
FACES = Path(os.environ.get("FASTFER_FACES_DIR")
             or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "faces")
CLIP = "short_hamilton_clip.mp4"

# (first frame, last frame): (min faces, max faces), judged by eye
CLIP_SHOTS = {
    (0, 19): (1, 2),     # wide stage shot: the singer (right) and the pianist (left, ~25 px)
    (20, 49): (0, 1),    # close-up of the pianist in profile, partly out of the frame
    (50, 81): (0, 1),    # the audience, out of focus; the edge of a profile at the right border
    (82, 210): (1, 1),   # the singer
    (211, 274): (3, 5),  # four people in the audience, a fifth partly hidden at the top edge
}


def require_faces() -> Path:
    if not (FACES / "faces.json").is_file():
        pytest.skip(f"the shared real photos are not at {FACES} (they sit beside the repository in the project's "
                    f"checkout only)")
    return FACES


def photo_ranges() -> dict[str, tuple[int, int]]:
    meta = json.loads((require_faces() / "faces.json").read_text())
    return {k: tuple(v) for k, v in meta.items() if not k.startswith("_") and isinstance(v, list)}


def clip_meta() -> dict:
    return json.loads((require_faces() / "faces.json").read_text())[CLIP]


def shot_range(frame: int) -> tuple[int, int]:
    for (a, b), r in CLIP_SHOTS.items():
        if a <= frame <= b:
            return r
    raise ValueError(f"frame {frame} is outside the clip")


def json_applies(frame: int) -> bool:
    """Whether faces.json's per-frame range [1, 2] matches what the frame shows (shots 1 and 4)."""
    return shot_range(frame) in ((1, 2), (1, 1))


def clip_frames(every: int = 1):
    """(index, RGB frame) of the clip, every ``every``-th frame."""
    import cv2

    cap = cv2.VideoCapture(str(require_faces() / CLIP))
    index = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if index % every == 0:
                yield index, np.ascontiguousarray(bgr[..., ::-1])
            index += 1
    finally:
        cap.release()
