"""Live and recorded streams: one frame source for cameras, network streams, video files and frame iterables;
per-frame expressions of tracked faces with bounded latency.

    stream = predictor.stream(0)                          # camera 0; or "rtsp://…", "http://…", "clip.mp4", frames
    for frame in stream:                                  # {"frame", "time", "faces", "dropped", "latency"}
        for face in frame["faces"]:
            print(face["track"], face["label"], face["confidence"])
    stream.summary()                                      # per track: dominant expression, seconds per expression

**Bounded latency.** A :class:`FrameSource` reads on a background thread. A *live* source (a camera or a URL,
or ``live=True``) keeps only the newest ``queue_size`` frames: when inference falls behind, older frames are
dropped — and counted (``dropped``) — instead of piling up, so a result is never more than about one inference
behind the scene. A recorded source (a video file, a frame iterable by default) is read without dropping: every
frame is processed, however long it takes.

**Tracking.** Faces are tracked with :class:`fastfer.infer.tracking.FaceTracker`: a new face is reported once
detected in ``min_hits`` processed frames, a reported face missed by the detector keeps its last box for ``hold``
frames (it is still classified there; ``held`` = True), and each track's probabilities are smoothed
(``smooth`` = the newest frame's weight; None: off).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np

from fastfer.data import face as face_lib
from fastfer.infer.tracking import FaceTracker
from fastfer.utils.errors import FastferError
from fastfer.utils.files import temporary_path

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class StreamError(FastferError, OSError):
    """A camera, URL or video that cannot be opened or read; the message names it."""


@dataclass
class Frame:
    """One frame of a source: ``index`` (position in the source), ``time`` (seconds: media time for videos,
    capture time since the start for live sources), ``image`` RGB uint8 (H, W, 3), ``captured`` (monotonic
    clock when it was read, for latency)."""

    index: int
    time: float
    image: np.ndarray
    captured: float


def describe_source(source) -> str:
    if isinstance(source, (int, np.integer)):
        return f"camera {int(source)}"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "frames"


def source_kind(source) -> str:
    """``camera``, ``url``, ``video`` or ``frames``."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return "camera"
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return "url" if text.lower().startswith(URL_SCHEMES) else "video"
    if isinstance(source, Iterable):
        return "frames"
    raise TypeError(f"source: expected a camera index, a URL, a video path or an iterable of frames, got "
                    f"{type(source).__name__}")


class FrameSource:
    """Frames from a camera index, a URL (``rtsp://``, ``http(s)://`` …), a video file or an iterable of RGB frames
    (anything :func:`fastfer.data.decode.as_rgb_uint8` takes), read on a background thread.

    Args:
        live: drop frames when the consumer is slower (default: True for cameras and URLs).
        queue_size: frames kept ahead of the consumer (live: the newest ones).
        fps: frame rate for frame times (default: the video's, else times are capture times).
        max_frames: stop after this many frames read.
    """

    def __init__(self, source, live: Optional[bool] = None, queue_size: int = 1, fps: Optional[float] = None,
                 max_frames: Optional[int] = None):
        self.kind = source_kind(source)
        self.name = describe_source(source)
        self.live = self.kind in ("camera", "url") if live is None else bool(live)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size: expected a positive int, got {queue_size!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                       or max_frames < 1):
            raise ValueError(f"max_frames: expected None or a positive int, got {max_frames!r}")
        self.queue_size, self.max_frames = queue_size, max_frames
        self.read = 0  # frames taken from the source
        self.dropped = 0  # frames discarded because the consumer was behind (live only)
        self._capture = None
        self._frames = None
        if self.kind == "frames":
            self._frames = iter(source)
            self.fps = fps
        else:
            self._capture = self._open(source)
            import cv2

            reported = self._capture.get(cv2.CAP_PROP_FPS)
            self.fps = fps or (reported if reported and 0 < reported < 1000 else None)
        self.size = None  # (H, W) of the first frame
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._done = False
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._reader, name=f"fastfer-frames-{self.name}", daemon=True)
        self._thread.start()

    def _open(self, source):
        cv2 = face_lib.import_cv2()
        if self.kind == "video" and not os.path.isfile(os.fspath(source)):
            raise StreamError(f"{self.name}: no such video file")
        capture = cv2.VideoCapture(int(source) if self.kind == "camera" else os.fspath(source))
        if not capture.isOpened():
            capture.release()
            why = {"camera": "no such camera, or it is in use",
                   "url": "the stream is unreachable or not one OpenCV's FFmpeg can read",
                   "video": "not a video OpenCV can decode"}[self.kind]
            raise StreamError(f"{self.name}: cannot open ({why})")
        return capture

    def _next_image(self) -> Optional[np.ndarray]:
        if self._frames is not None:
            try:
                item = next(self._frames)
            except StopIteration:
                return None
            return face_lib.as_rgb_uint8(item, f"{self.name}[{self.read}]")
        ok, bgr = self._capture.read()
        if not ok:
            return None
        import cv2

        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _reader(self) -> None:
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.read >= self.max_frames:
                    break
                image = self._next_image()
                if image is None:
                    break
                now = time.monotonic()
                index = self.read
                self.read += 1
                t = index / self.fps if self.fps and not self.live else now - self._start
                frame = Frame(index, t, image, now)
                with self._cond:
                    if self.live:
                        while len(self._queue) >= self.queue_size:
                            self._queue.popleft()
                            self.dropped += 1
                    else:
                        while len(self._queue) >= self.queue_size and not self._stop.is_set():
                            self._cond.wait(0.1)
                    self._queue.append(frame)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, raised there
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        with self._cond:
            while not self._queue and not self._done:
                self._cond.wait(0.1)
            if self._queue:
                frame = self._queue.popleft()
                if self.size is None:
                    self.size = frame.image.shape[:2]
                self._cond.notify_all()
                return frame
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopIteration

    def close(self) -> None:
        """Stop reading and release the camera / stream / file."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self._capture is not None:
            self._capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stream:
    """Tracked expressions of the faces in a stream — :meth:`fastfer.infer.Predictor.stream`.

    Args:
        predictor: the :class:`fastfer.infer.Predictor` (its detector, model, temperature, ``min_confidence``).
        source: a camera index, a URL, a video path, an iterable of RGB frames, or a :class:`FrameSource`.
        every: process every N-th frame read (the others are skipped, not counted as dropped).
        smooth: weight of the newest frame in each track's probability average (None: no smoothing).
        min_hits, hold, max_gap, min_iou: tracking (see :class:`FaceTracker`).
        live, queue_size, fps, max_frames: the frame source (see :class:`FrameSource`).
        annotate: write every frame read, with the boxes, track ids and labels of the latest processed frame, to
            this video file (.mp4; frames dropped by a live source are not in it).

    Iterating yields one dict per processed frame: ``frame`` (index in the source), ``time`` (s), ``faces``
    (each with ``track``, ``held``, ``box``, ``label``, ``confidence``, ``probs`` (smoothed), ``raw_label`` /
    ``raw_probs`` (this frame's own), ``logits``), ``dropped`` (frames dropped so far) and ``latency`` (seconds
    from reading the frame to its result).
    """

    def __init__(self, predictor, source: Union[int, str, os.PathLike, Iterable, FrameSource], every: int = 1,
                 smooth: Optional[float] = 0.5, min_hits: int = 2, hold: int = 3, max_gap: int = 10,
                 min_iou: float = 0.3, live: Optional[bool] = None, queue_size: int = 1,
                 fps: Optional[float] = None, max_frames: Optional[int] = None, annotate=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected a positive int, got {every!r}")
        self.predictor, self.every = predictor, every
        self.tracker = FaceTracker(predictor.label_names, alpha=smooth, min_iou=min_iou, max_gap=max_gap,
                                   min_hits=min_hits, hold=hold, min_confidence=predictor.min_confidence)
        self.source = source if isinstance(source, FrameSource) else FrameSource(source, live, queue_size, fps,
                                                                                 max_frames)
        self.annotate = os.fspath(annotate) if annotate is not None else None
        self.processed = 0
        self.faces = 0
        self._writer = None
        self._last_time: Optional[float] = None
        self._started: Optional[float] = None
        self._elapsed = 0.0
        self._iterating = False
        self._last_faces: list = []

    @property
    def dropped(self) -> int:
        return self.source.dropped

    def __iter__(self):
        if self._iterating:
            raise RuntimeError("stream: already being iterated (a Stream runs once)")
        self._iterating = True
        self._started = time.monotonic()
        try:
            for frame in self.source:
                if frame.index % self.every:
                    if self.annotate is not None:  # the annotated video keeps every frame: the latest faces
                        self._write(frame.image, self._last_faces)
                    continue
                result = self.process(frame)
                self._last_faces = result["faces"]
                yield result
        except GeneratorExit:  # the consumer stopped early: what was written is a valid video
            raise
        except BaseException:
            self._failed = True
            raise
        finally:
            self._elapsed = time.monotonic() - self._started
            self.close()

    def process(self, frame: Frame) -> dict:
        """Detect, track and classify one frame."""
        p = self.predictor
        where = f"{self.source.name}#frame{frame.index}"
        detected = p.detect(frame.image, where=where)
        assigned = self.tracker.assign([f.box for f in detected], frame.time)
        faces = [detected[a["index"]] if a["index"] is not None else face_lib.Face(tuple(a["box"]))
                 for a in assigned]
        crops, kinds = [], []
        for f in faces:
            crop, kind = p._crop(frame.image, f)
            crops.append(crop)
            kinds.append(kind)
        results = p._results(p.logits(p._to_input(crops))) if crops else []
        dt = self._frame_interval(frame.time)
        out = []
        for a, f, kind, r in zip(assigned, faces, kinds, results):
            probs = self.tracker.record(a["track"], [r["probs"][n] for n in p.label_names], dt)
            smoothed = {n: float(v) for n, v in zip(p.label_names, probs)}
            out.append({"track": a["track"], "held": a["index"] is None,
                        "box": [round(float(v), 2) for v in f.box],
                        "landmarks": None if f.landmarks is None else np.round(f.landmarks, 2).tolist(),
                        "score": f.score, "alignment": kind,
                        "label": self.tracker.label_of(probs), "confidence": float(probs.max()), "probs": smoothed,
                        "raw_label": r["label"], "raw_probs": r["probs"], "logits": r["logits"]})
        self.processed += 1
        self.faces += len(out)
        if self.annotate is not None:
            self._write(frame.image, out)
        return {"frame": frame.index, "time": round(frame.time, 3), "faces": out, "dropped": self.source.dropped,
                "latency": round(time.monotonic() - frame.captured, 4)}

    def _frame_interval(self, t: float) -> float:
        """Seconds this processed frame stands for: the time since the previous processed one (the first: one
        frame step at the source's rate, when known)."""
        if self._last_time is None:
            dt = self.every / self.source.fps if self.source.fps else 0.0
        else:
            dt = max(0.0, t - self._last_time)
        self._last_time = t
        return dt

    def _write(self, image: np.ndarray, faces: list) -> None:
        import cv2

        from fastfer.viz import annotate_image

        if self._writer is None:
            folder = os.path.dirname(os.path.abspath(self.annotate))
            os.makedirs(folder, exist_ok=True)
            fps = self.source.fps or 25.0
            h, w = image.shape[:2]
            # Into a temporary file beside the target, renamed at close(): a stream that fails midway never
            # replaces an existing video with a broken one.
            self._video_tmp = temporary_path(self.annotate) + os.path.splitext(self.annotate)[1]
            self._writer = cv2.VideoWriter(self._video_tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self._writer.isOpened():
                raise StreamError(f"{self.annotate}: cannot write the annotated video")
        self._writer.write(cv2.cvtColor(annotate_image(image, faces), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Stop the source and finish the annotated video."""
        self.source.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            # a failed stream keeps its frames as <video>.partial and leaves an existing video untouched
            os.replace(self._video_tmp, self.annotate + (".partial" if getattr(self, "_failed", False) else ""))

    def summary(self) -> dict:
        """``source``, ``frames_read``, ``frames_processed``, ``dropped``, ``faces``, ``seconds`` (wall time),
        ``fps`` (processed frames per wall second) and ``tracks`` {id: per-track summary — see
        :meth:`FaceTracker.summary`}."""
        elapsed = self._elapsed or ((time.monotonic() - self._started) if self._started else 0.0)
        return {"source": self.source.name, "frames_read": self.source.read, "frames_processed": self.processed,
                "dropped": self.source.dropped, "faces": self.faces, "seconds": round(elapsed, 3),
                "fps": round(self.processed / elapsed, 2) if elapsed > 0 else None,
                "tracks": self.tracker.summary()}
