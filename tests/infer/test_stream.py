"""Predictor.stream / FrameSource: a synthetic source faster than inference drops (and counts) frames and keeps the
latency bounded; a recorded source drops nothing; results carry stable track ids, smoothing and a per-track
summary; the annotated video; sources that cannot be opened; the real clip end to end."""
import time

import numpy as np
import pytest
import torch

import fastfer.models
from fastfer.infer import Predictor
from fastfer.infer.stream import FrameSource, StreamError, source_kind

MICRO = dict(ir_widths=(8, 8), embed_dim=32, depth=2, num_heads=2, keep_rates=(1.0, 0.9), patch_keep=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fastfer.models.create_model("apvit_tiny", **MICRO).eval()
    torch.nn.init.normal_(m.get_classifier().weight, std=0.5)
    return m


def _moving_face_detector(delay=0.0):
    """A stand-in detector: one face whose box drifts 2 px per frame (read from the frame's first pixel), and an
    optional delay that makes inference slower than the source."""
    from fastfer.data.detection import Face

    def detect(image):
        if delay:
            time.sleep(delay)
        x = float(image[0, 0, 0]) * 2
        return [Face((20 + x, 20, 80 + x, 80))]

    return detect


def _frames(n, interval=0.0):
    """n synthetic 120×160 frames (frame i has its first pixel = i), produced every ``interval`` seconds."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(n):
        if interval:
            time.sleep(interval)
        frame = base.copy()
        frame[0, 0] = i
        yield frame


def test_source_faster_than_inference_drops_and_counts_frames(model):
    """Frames every 10 ms, inference ≥ 60 ms a frame: a live stream keeps only the newest frame, so most frames
    are dropped — every frame is either processed or counted as dropped — and each result is fresh."""
    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector(delay=0.06))
    stream = predictor.stream(_frames(60, interval=0.01), live=True, min_hits=1)
    results = list(stream)
    summary = stream.summary()
    assert summary["frames_read"] == 60
    assert summary["dropped"] > 20 and summary["frames_processed"] == len(results)
    assert summary["frames_processed"] + summary["dropped"] == 60
    assert results[-1]["dropped"] == summary["dropped"]
    frames = [r["frame"] for r in results]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    # bounded latency: a frame waits at most for the inference in progress (≈ 0.06–0.1 s), not for a backlog
    latencies = [r["latency"] for r in results[1:]]
    assert max(latencies) < 0.6, latencies


def test_recorded_source_drops_nothing(model):
    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector(delay=0.01))
    stream = predictor.stream(_frames(12), min_hits=1, fps=10)
    results = list(stream)
    assert [r["frame"] for r in results] == list(range(12)) and stream.dropped == 0
    assert [r["time"] for r in results[:3]] == [0.0, 0.1, 0.2]  # media time from fps


def test_stream_results_tracks_smoothing_and_summary(model):
    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector())
    stream = predictor.stream(_frames(10), fps=5, min_hits=2, smooth=0.5, every=2)
    results = list(stream)
    assert [r["frame"] for r in results] == [0, 2, 4, 6, 8]
    assert results[0]["faces"] == []  # min_hits 2: the face is reported from its second sighting on
    faces = [r["faces"][0] for r in results[1:]]
    assert {f["track"] for f in faces} == {0}
    assert faces[1]["box"][0] > faces[0]["box"][0]  # follows the drift
    face = faces[-1]
    assert set(face) >= {"track", "held", "box", "label", "confidence", "probs", "raw_label", "raw_probs", "logits"}
    assert abs(sum(face["probs"].values()) - 1) < 1e-6 and face["confidence"] == max(face["probs"].values())
    assert face["probs"] != face["raw_probs"]  # smoothed over frames
    summary = stream.summary()
    assert summary["frames_processed"] == 5 and summary["faces"] == 4
    track = summary["tracks"][0]
    assert track["frames"] == 4 and track["seconds"] == pytest.approx(4 * 2 / 5)  # every 2nd frame at 5 fps
    assert track["dominant"] in predictor.label_names and sum(track["time"].values()) == pytest.approx(1.6)


def test_held_boxes_are_still_classified(model):
    from fastfer.data.detection import Face

    seen = iter([True, True, False, False, True])

    def flicker(image):
        return [Face((30, 30, 90, 90))] if next(seen) else []

    predictor = Predictor(model, device="cpu", backend="torch", detector=flicker)
    results = list(predictor.stream(_frames(5), min_hits=1, hold=3))
    assert [len(r["faces"]) for r in results] == [1, 1, 1, 1, 1]
    assert [r["faces"][0]["held"] for r in results] == [False, False, True, True, False]
    assert {r["faces"][0]["track"] for r in results} == {0}


def test_annotated_video_has_every_frame(model, tmp_path):
    import cv2

    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector())
    target = tmp_path / "out" / "annotated.mp4"
    list(predictor.stream(_frames(8), fps=10, every=2, min_hits=1, annotate=target))
    cap = cv2.VideoCapture(str(target))
    n, first = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        first = frame if first is None else first
        n += 1
    assert n == 8 and first.shape == (120, 160, 3)


def test_sources_that_cannot_be_opened(tmp_path):
    with pytest.raises(StreamError, match=r"missing.mp4: no such video file"):
        FrameSource(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(StreamError, match=r"bad.mp4: cannot open \(not a video OpenCV can decode\)"):
        FrameSource(str(bad))
    with pytest.raises(StreamError, match=r"camera 97: cannot open \(no such camera, or it is in use\)"):
        FrameSource(97)
    with pytest.raises(TypeError, match="source: expected a camera index, a URL"):
        FrameSource(3.5)
    with pytest.raises(ValueError, match="queue_size"):
        FrameSource([], queue_size=0)
    assert [source_kind(s) for s in (0, "rtsp://cam/1", "HTTP://x/y.mjpg", "a.mp4", [])] == \
        ["camera", "url", "url", "video", "frames"]


def test_unreachable_url_is_a_clear_error():
    # a local port nobody listens on: refused at once, nothing leaves the machine
    with pytest.raises(StreamError, match=r"rtsp://127.0.0.1:9/none: cannot open \(the stream is unreachable"):
        FrameSource("rtsp://127.0.0.1:9/none")


def test_bad_frame_in_an_iterable_is_raised_naming_it(model):
    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector())
    frames = [np.zeros((40, 40, 3), np.uint8), np.full((40, 40, 3), 300.0)]
    stream = predictor.stream(frames, min_hits=1)
    with pytest.raises(ValueError, match=r"frames\[1\]: expected float64 values in \[0, 1\]"):
        list(stream)
    assert stream.processed == 1  # the good frame was processed before


def test_max_frames_and_single_run(model):
    predictor = Predictor(model, device="cpu", backend="torch", detector=_moving_face_detector())
    stream = predictor.stream(_frames(50), max_frames=7)
    assert len(list(stream)) == 7
    with pytest.raises(RuntimeError, match="already being iterated"):
        list(stream)
    with pytest.raises(ValueError, match="every"):
        predictor.stream([], every=0)


def test_real_clip_end_to_end(model):
    from tests.data.real_faces import CLIP, require_faces

    root = require_faces()
    predictor = Predictor(model, device="cpu", backend="torch")  # the default detector
    stream = predictor.stream(str(root / CLIP), every=5)
    results = list(stream)
    summary = stream.summary()
    assert summary["frames_read"] == 275 and summary["frames_processed"] == 55 and summary["dropped"] == 0
    assert results[1]["time"] == pytest.approx(5 / 29.97, abs=1e-3)
    assert sum(len(r["faces"]) for r in results) == summary["faces"] > 40
    for track in summary["tracks"].values():
        assert track["dominant"] in predictor.label_names
