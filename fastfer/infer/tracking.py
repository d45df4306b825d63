"""Face tracks across video frames: greedy IoU matching, confirmation and hold-over of detections, exponential
smoothing of each track's probabilities, and a per-track summary (time per expression, dominant expression).

Per-frame detectors flicker: a face is missed for a few frames, a hand is taken for a face in one. The tracker
smooths the *detections* as well as the probabilities:

- a new track is reported once it was detected in ``min_hits`` processed frames (one-frame false positives
  never show);
- a reported track that is missed keeps its last box for up to ``hold`` processed frames (``held`` = True),
  so a face does not vanish for the frames the detector misses it;
- a track unseen for more than ``max_gap`` processed frames ends; a face seen again later gets a new id.

Two ways to use it:

- ``update(faces, time)`` — faces already classified (dicts with ``box`` and ``probs``): adds ``track`` to each
  and, with ``alpha``, smooths ``probs`` / ``label`` (the frame's own values move to ``raw_probs`` /
  ``raw_label``). Held boxes are not added (there is nothing classified for them).
- ``assign(boxes, time)`` then ``record(track, probs, dt)`` — what :meth:`fastfer.infer.Predictor.stream` does:
  assign says which boxes to classify this frame (detections of reported tracks plus held boxes), record
  smooths and accounts each result.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

UNCERTAIN = "uncertain"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check(name: str, value, low: float, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or value < low:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} ≥ {low:g}, got {value!r}")
    return value


class FaceTracker:
    """Face tracks across processed frames.

    Args:
        label_names: class names in probability order (for smoothing and the summary).
        alpha: exponential smoothing weight of the newest frame, p ← alpha·p_new + (1 − alpha)·p (None: off).
        min_iou: a detection continues a track when their boxes overlap at least this much (greedy, best first).
        max_gap: processed frames a track may go unseen before it ends.
        min_hits: detections before a new track is reported.
        hold: processed frames a reported track's last box is kept when it is missed (≤ ``max_gap``).
        min_confidence: a smoothed top probability below this gives the label ``uncertain``.
    """

    def __init__(self, label_names: Sequence[str] = (), alpha: Optional[float] = None, min_iou: float = 0.3,
                 max_gap: int = 5, min_hits: int = 1, hold: int = 0, min_confidence: Optional[float] = None):
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
            raise ValueError(f"alpha: expected None or a weight in (0, 1], got {alpha!r}")
        self.labels = list(label_names)
        self.alpha = alpha
        self.min_iou = _check("min_iou", min_iou, 0.0)
        self.max_gap = _check("max_gap", max_gap, 0, integer=True)
        self.min_hits = _check("min_hits", min_hits, 1, integer=True)
        self.hold = _check("hold", hold, 0, integer=True)
        if hold > max_gap:
            raise ValueError(f"hold: expected ≤ max_gap ({max_gap}), got {hold}")
        self.min_confidence = min_confidence
        self.tracks: dict[int, dict] = {}
        self.stats: dict[int, dict] = {}  # kept after a track ends, for the summary
        self.next_id = 0
        self.step = 0

    # --- matching ---------------------------------------------------------------------------------------------

    def assign(self, boxes: Sequence[Sequence[float]], time: Optional[float] = None) -> list[dict]:
        """Match this frame's detections to tracks. Returns what to report, detections first (in input order)
        then held boxes: ``{"track", "box", "index"}`` — ``index`` is the detection's position in ``boxes``, None
        for a held box."""
        self.step += 1
        self.tracks = {k: t for k, t in self.tracks.items() if self.step - t["seen"] <= self.max_gap + 1}
        pairs = sorted(((iou(b, t["box"]), i, k) for i, b in enumerate(boxes) for k, t in self.tracks.items()),
                       key=lambda p: (-p[0], p[1], p[2]))
        matched: dict[int, int] = {}
        used = set()
        for overlap, i, k in pairs:
            if overlap < self.min_iou:
                break
            if i not in matched and k not in used:
                matched[i] = k
                used.add(k)
        out = []
        for i, box in enumerate(boxes):
            box = [float(v) for v in box]
            if i in matched:
                track = self.tracks[matched[i]]
                track["hits"] += 1
            else:
                matched[i] = self.next_id
                self.next_id += 1
                track = self.tracks[matched[i]] = {"hits": 1, "probs": None, "first_step": self.step}
            track.update(box=box, seen=self.step, time=time)
            if track["hits"] >= self.min_hits:
                track["reported"] = True
                out.append({"track": matched[i], "box": box, "index": i})
        for k, track in self.tracks.items():
            if k not in used and track["seen"] < self.step and track.get("reported") \
                    and self.step - track["seen"] <= self.hold:
                out.append({"track": k, "box": list(track["box"]), "index": None})
        return out

    # --- probabilities ----------------------------------------------------------------------------------------

    def label_of(self, probs: np.ndarray) -> str:
        top = int(np.argmax(probs))
        if self.min_confidence is not None and float(probs[top]) < self.min_confidence:
            return UNCERTAIN
        return self.labels[top]

    def record(self, track: int, probs, dt: float = 0.0) -> np.ndarray:
        """Smooth ``track``'s probabilities with this frame's ``probs`` (sequence in label order, or a dict) and
        count ``dt`` seconds for the resulting label. Returns the smoothed probabilities."""
        if isinstance(probs, dict):
            probs = [probs[n] for n in self.labels]
        probs = np.asarray(probs, dtype=np.float64)
        state = self.tracks.get(track)
        if state is not None:
            if self.alpha is not None and state["probs"] is not None:
                probs = self.alpha * probs + (1 - self.alpha) * state["probs"]
            state["probs"] = probs
        stats = self.stats.setdefault(track, {"frames": 0, "seconds": 0.0, "time": {}, "count": {},
                                              "first": None, "last": None})
        label = self.label_of(probs)
        stats["frames"] += 1
        stats["seconds"] += float(dt)
        stats["time"][label] = stats["time"].get(label, 0.0) + float(dt)
        stats["count"][label] = stats["count"].get(label, 0) + 1
        t = state.get("time") if state is not None else None
        stats["first"] = t if stats["first"] is None else stats["first"]
        stats["last"] = t
        return probs

    def update(self, faces: list[dict], time: Optional[float] = None, dt: float = 0.0) -> list[dict]:
        """Classified faces of one frame (dicts with ``box``, ``probs``) → the same dicts with ``track`` (and,
        with ``alpha``, smoothed ``probs`` / ``label``). Faces of tracks not yet confirmed (``min_hits``) are left
        out."""
        reported = {a["index"]: a["track"] for a in self.assign([f["box"] for f in faces], time)
                    if a["index"] is not None}
        out = []
        for i, face in enumerate(faces):
            if i not in reported:
                continue
            face["track"] = reported[i]
            if face.get("error"):  # no probabilities to record (non-finite logits): tracked, not counted
                out.append(face)
                continue
            probs = self.record(reported[i], face["probs"], dt)
            if self.alpha is not None:
                face["raw_label"], face["raw_probs"] = face["label"], face["probs"]
                face["probs"] = {n: float(p) for n, p in zip(self.labels, probs)}
                face["label"] = self.label_of(probs)
            out.append(face)
        return out

    # --- summary ----------------------------------------------------------------------------------------------

    def summary(self) -> dict[int, dict]:
        """Per track id: ``frames`` (processed frames it was reported in), ``seconds`` (time covered),
        ``time`` {label: seconds}, ``frames_per_label`` {label: frames}, ``dominant`` (the label with the most
        time; ties — e.g. no time given — by frame count), ``first`` / ``last`` (frame times, when given)."""
        out = {}
        for k, s in sorted(self.stats.items()):
            time = dict(sorted(s["time"].items(), key=lambda kv: (-kv[1], -s["count"][kv[0]])))
            dominant = max(time, key=lambda n: (time[n], s["count"][n])) if time else None
            out[k] = {"frames": s["frames"], "seconds": round(s["seconds"], 3),
                      "time": {n: round(v, 3) for n, v in time.items()}, "frames_per_label": dict(s["count"]),
                      "dominant": dominant,
                      "first": s["first"], "last": s["last"]}
        return out
