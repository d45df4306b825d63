"""Face tracks across video frames: greedy IoU matching and exponential smoothing of each track's probabilities."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Greedy IoU tracking of faces across processed frames, with optional exponential smoothing of each track's
    probabilities: p ← alpha·p_new + (1 − alpha)·p. A track unseen for ``max_gap`` processed frames ends.

    ``update(faces)`` adds ``track`` to every face dict; with ``alpha`` set, ``label`` / ``probs`` become the
    smoothed values and the frame's own prediction moves to ``raw_label`` / ``raw_probs``.
    """

    def __init__(self, label_names: Sequence[str], alpha: Optional[float] = None, min_iou: float = 0.3,
                 max_gap: int = 5):
        self.labels = list(label_names)
        self.alpha, self.min_iou, self.max_gap = alpha, min_iou, max_gap
        self.tracks: dict[int, dict] = {}
        self.next_id = 0
        self.step = 0

    def update(self, faces: list[dict]) -> list[dict]:
        self.step += 1
        self.tracks = {k: t for k, t in self.tracks.items() if self.step - t["seen"] <= self.max_gap}
        pairs = sorted(((_iou(f["box"], t["box"]), i, k) for i, f in enumerate(faces)
                        for k, t in self.tracks.items()), reverse=True)
        assigned: dict[int, int] = {}
        used = set()
        for iou, i, k in pairs:
            if iou < self.min_iou:
                break
            if i not in assigned and k not in used:
                assigned[i] = k
                used.add(k)
        for i, face in enumerate(faces):
            probs = np.array([face["probs"][n] for n in self.labels])
            if i in assigned:
                track = self.tracks[assigned[i]]
                if self.alpha is not None:
                    probs = self.alpha * probs + (1 - self.alpha) * track["probs"]
            else:
                assigned[i] = self.next_id
                self.next_id += 1
                track = self.tracks[assigned[i]] = {}
            track.update(box=face["box"], probs=probs, seen=self.step)
            face["track"] = assigned[i]
            if self.alpha is not None:
                face["raw_label"], face["raw_probs"] = face["label"], face["probs"]
                face["probs"] = {n: float(p) for n, p in zip(self.labels, probs)}
                face["label"] = self.labels[int(probs.argmax())]
        return faces
