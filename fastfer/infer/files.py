"""Prediction over files and streams: inputs from paths, folders, URLs and cameras, result files (JSON lines / CSV),
image batches, videos and live streams (through :class:`fastfer.infer.stream.Stream`: frame sampling, face
tracking, probability smoothing, per-track summaries), annotated outputs — what ``fastfer predict`` runs."""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fastfer.infer.stream import URL_SCHEMES, StreamError
from fastfer.utils.files import atomic_write_bytes, fsync_dir, temporary_path

NO_FACE = "no face found"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jp2"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


@dataclass(frozen=True)
class PredictOptions:
    """What to do besides classifying: ``annotate`` / ``explain`` output folders; for videos and streams the
    frame step ``every``, track smoothing weight ``smooth`` (None: off), tracking ``min_hits`` / ``hold``, and
    ``max_frames`` (streams stop after that many frames read)."""

    annotate: Optional[str] = None
    explain: Optional[str] = None
    every: int = 1
    smooth: Optional[float] = None
    min_hits: int = 2
    hold: int = 3
    max_frames: Optional[int] = None


def collect_inputs(paths) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """PATH arguments → ([(kind, path, name)], [(path, error)] for missing ones). ``kind`` is ``image``,
    ``video`` or ``stream`` (a URL: ``rtsp://``, ``http(s)://`` …); ``name`` is the path relative to the folder
    argument's parent (the file name for files), used for ``--annotate`` outputs. Folders are walked recursively
    (sorted); inside folders only files with an image or video extension are taken, files named explicitly are
    tried as images unless they look like videos."""
    inputs, errors = [], []
    for raw in paths:
        if str(raw).lower().startswith(URL_SCHEMES):
            inputs.append(("stream", str(raw), stream_name(str(raw))))
            continue
        path = Path(raw)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                ext = f.suffix.lower()
                if ext in IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS:
                    kind = "video" if ext in VIDEO_EXTENSIONS else "image"
                    inputs.append((kind, str(f), str(Path(path.resolve().name) / f.relative_to(path))))
        elif path.is_file():
            kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
            inputs.append((kind, str(path), path.name))
        else:
            errors.append((str(raw), f"no such file or folder: {raw}"))
    return inputs, errors


def new_stats(unreadable: int = 0) -> dict:
    return {"images": 0, "frames": 0, "faces": 0, "no_face": 0, "unreadable": unreadable}


def predict_files(predictor, inputs: Sequence[tuple[str, str, str]], writer: "ResultWriter", options: PredictOptions,
                  stats: dict, bar) -> dict:
    """Classify every input of :func:`collect_inputs` (images in batches, then videos), writing a record per
    image / processed frame to ``writer``; returns ``stats`` (counts)."""
    images = [(p, name) for kind, p, name in inputs if kind == "image"]
    for start in range(0, len(images), predictor.batch_size):
        process_image_batch(predictor, images[start:start + predictor.batch_size], writer, stats, options, bar)
    for kind, path, name in inputs:
        if kind in ("video", "stream"):
            process_video(predictor, path, name, writer, stats, options, bar)
    return stats


def total_work(inputs: Sequence[tuple[str, str, str]], every: int) -> int:
    """Images plus video frames that will be classified (for a progress bar); None when a stream (camera, URL)
    is among them."""
    if any(kind == "stream" for kind, _, _ in inputs):
        return None
    return sum(count_frames(p, every) if kind == "video" else 1 for kind, p, _ in inputs)


def stream_name(source) -> str:
    """A file-name-safe name for a camera index or URL (for ``--annotate`` outputs)."""
    if isinstance(source, int):
        return f"camera{source}"
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(source).split("://", 1)[-1]).strip("_")[:80] or "stream"


class ResultWriter:
    """Writes result records to ``path`` (.jsonl / .json: one JSON object per line; .csv: one row per face) or,
    with no path, JSON lines to stdout. Record: ``path``, optional ``frame`` / ``time`` / ``dropped``, ``faces``,
    ``error``."""

    def __init__(self, path: Optional[str], label_names: Sequence[str]):
        self.labels = list(label_names)
        self.path = path
        self.csv = path is not None and Path(path).suffix.lower() == ".csv"
        if path is not None and os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Results stream into a temporary file beside ``path``; close() renames it over ``path`` — a file already
        # there is replaced only by a complete result set (see close for what a failure keeps).
        self.tmp = temporary_path(path) if path else None
        self.file = open(self.tmp, "w", newline="", encoding="utf-8") if path else sys.stdout
        if self.csv:
            self.columns = ["path", "frame", "time", "face", "track", "x1", "y1", "x2", "y2", "score", "alignment",
                            "label", *(f"p_{n}" for n in self.labels), "error"]
            self.rows = csv.DictWriter(self.file, self.columns)
            self.rows.writeheader()

    def write(self, record: dict) -> None:
        if not self.csv:
            self.file.write(json.dumps(record) + "\n")
            return
        base = {"path": record["path"], "frame": record.get("frame", ""), "time": record.get("time", ""),
                "error": record.get("error", "")}
        if not record["faces"]:
            self.rows.writerow(base)
        for i, face in enumerate(record["faces"]):
            x1, y1, x2, y2 = face["box"]
            row = dict(base, face=i, track=face.get("track", ""), x1=x1, y1=y1, x2=x2, y2=y2,
                       score="" if face.get("score") is None else face["score"], alignment=face["alignment"],
                       label=face["label"])
            row.update({f"p_{n}": "" if face["probs"][n] is None else round(face["probs"][n], 6)
                        for n in self.labels})
            self.rows.writerow(row)

    def close(self, complete: bool = True) -> Optional[str]:
        """Finish the file. Complete: it replaces ``path`` atomically. Interrupted (``complete=False``): the
        results computed so far are kept as ``<path>.partial`` and an existing ``path`` is left as it was.
        Returns where the results are (None for stdout)."""
        if self.file is sys.stdout:
            self.file.flush()
            return None
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.file.close()
        target = self.path if complete else self.path + ".partial"
        os.replace(self.tmp, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
        return target


def _record(path: str, faces: list, **extra) -> dict:
    record = {"path": path, **extra, "faces": faces}
    if not faces:
        record["error"] = NO_FACE
    return record


def _write_image(path: Path, rgb: np.ndarray) -> None:
    """An annotated image, encoded in memory and written atomically (PNG when the suffix has no encoder)."""
    import cv2

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        path = path.with_suffix(".png")
        ok, data = cv2.imencode(".png", bgr)
    atomic_write_bytes(path, data.tobytes())


def process_image_batch(predictor, items: Sequence[tuple[str, str]], writer: ResultWriter, stats: dict,
                        options: PredictOptions, bar) -> None:
    """Read (unreadable files → an error record), classify together, write records and annotated copies."""
    from fastfer.data.decode import read_image
    from fastfer.viz import annotate_image

    arrays, names, rels = [], [], []
    for path, rel in items:
        try:
            arrays.append(read_image(path))
            names.append(path)
            rels.append(rel)
        except (OSError, ValueError) as exc:
            writer.write({"path": path, "faces": [], "error": str(exc)})
            stats["unreadable"] += 1
            bar.update(1)
    explain = bool(options.explain)
    for arr, path, rel, faces in zip(arrays, names, rels, predictor.predict(arrays, names=names, crops=explain)):
        if explain:
            _write_explanation(predictor, Path(options.explain) / (rel + ".app.png"), [f.pop("crop") for f in faces],
                               faces)
        writer.write(_record(path, faces))
        stats["images"] += 1
        stats["faces"] += len(faces)
        stats["no_face"] += not faces
        if options.annotate:
            _write_image(Path(options.annotate) / rel, annotate_image(arr, faces))
        bar.update(1)


def _write_explanation(predictor, target: Path, crops: list, faces: list) -> None:
    """APP / ATP overlay of one image's faces (one row per face) — nothing for an image without faces."""
    import torch

    from fastfer.viz import plot_app_overlay

    if not crops:
        return
    details = predictor.explain(crops)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    titles = [f"face {i}: {f['label']} {f['probs'][f['label']]:.2f}" for i, f in enumerate(faces)]
    plot_app_overlay(images, details["app_scores"], details["app_index"], target, details["token_positions"],
                     titles=titles)


# --- videos -----------------------------------------------------------------------------------------------------


def count_frames(path: str, every: int) -> int:
    """Frames that will be classified in a video (0 when unknown or unreadable)."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return max(0, (n + every - 1) // every)


def process_video(predictor, source, rel: str, writer: ResultWriter, stats: dict, options: PredictOptions,
                  bar) -> Optional[dict]:
    """Classify every ``options.every``-th frame of a video file, URL or camera (a :class:`Stream`): one record
    per processed frame (faces with ``track``); with ``--annotate`` write ``<DIR>/<rel>.mp4``. A source that
    cannot be opened gets an error record. Returns the stream's summary (per-track expressions), also kept in
    ``stats["tracks"]``; Ctrl-C ends a live stream cleanly."""
    name = source if isinstance(source, str) else f"camera {source}"
    target = str((Path(options.annotate) / rel).with_suffix(".mp4")) if options.annotate else None
    try:
        stream = predictor.stream(source, every=options.every, smooth=options.smooth, min_hits=options.min_hits,
                                  hold=options.hold, max_frames=options.max_frames, annotate=target)
    except StreamError as exc:
        writer.write({"path": name, "faces": [], "error": str(exc)})
        stats["unreadable"] += 1
        return None
    live = stream.source.live
    try:
        for result in stream:
            extra = {"frame": result["frame"], "time": result["time"]}
            if live:
                extra["dropped"] = result["dropped"]
            writer.write(_record(name, result["faces"], **extra))
            stats["frames"] += 1
            stats["faces"] += len(result["faces"])
            stats["no_face"] += not result["faces"]
            bar.update(1)
    except KeyboardInterrupt:
        if not live:
            raise
    finally:
        stream.close()
    if stream.source.read == 0:
        writer.write({"path": name, "faces": [], "error": f"cannot read video {name!r} (no frame could be "
                                                         f"decoded)"})
        stats["unreadable"] += 1
        return None
    summary = stream.summary()
    stats.setdefault("tracks", {})[name] = summary
    stats["dropped"] = stats.get("dropped", 0) + summary["dropped"]
    return summary
