"""FaceTracker: confirmation, hold-over, stable ids, smoothing, per-track summary (unit), and on the real clip:
≥ 95 % of frames with the right face count once tracking smooths the detections (default detector)."""
from collections import Counter

import pytest

from fastfer.data.detection import make_detector
from fastfer.infer.tracking import UNCERTAIN, FaceTracker
from tests.data.real_faces import clip_frames, json_applies, require_faces, shot_range

A, B = [0, 0, 10, 10], [50, 50, 60, 60]


def _shift(box, dx):
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_min_hits_hides_one_frame_false_positives():
    tracker = FaceTracker(min_hits=2)
    assert tracker.assign([A]) == []  # seen once: not yet reported
    assert [a["track"] for a in tracker.assign([_shift(A, 1), B])] == [0]  # A confirmed; B is new
    assert [a["track"] for a in tracker.assign([_shift(A, 2)])] == [0]  # B never came back: never shown


def test_hold_keeps_a_missed_face_for_a_few_frames_then_ends_it():
    tracker = FaceTracker(min_hits=1, hold=2, max_gap=3)
    tracker.assign([A])
    for _ in range(2):
        (held,) = tracker.assign([])
        assert held["index"] is None and held["track"] == 0 and held["box"] == A
    assert tracker.assign([]) == []  # hold (2) used up
    assert [a["track"] for a in tracker.assign([A])] == [0]  # back within max_gap: the same id
    for _ in range(5):
        tracker.assign([])
    assert [a["track"] for a in tracker.assign([A])] == [1]  # gone longer than max_gap: a new id


def test_greedy_iou_matching_keeps_ids_when_faces_cross_slowly():
    tracker = FaceTracker()
    ids = [[a["track"] for a in tracker.assign([_shift(A, 3 * t), _shift(B, -3 * t)])] for t in range(5)]
    assert ids == [[0, 1]] * 5


def test_update_smooths_and_summary_counts_time_per_expression():
    tracker = FaceTracker(["calm", "happy"], alpha=0.5, min_confidence=0.6)
    frames = [{"calm": 1.0, "happy": 0.0}, {"calm": 0.0, "happy": 1.0}, {"calm": 0.0, "happy": 1.0}]
    labels = []
    for t, probs in enumerate(frames):
        (face,) = tracker.update([{"box": A, "label": max(probs, key=probs.get), "probs": probs}], time=t * 0.5,
                                 dt=0.5)
        labels.append(face["label"])
    # smoothed: (1, 0) → (.5, .5) uncertain below 0.6 → (.25, .75) happy
    assert labels == ["calm", UNCERTAIN, "happy"]
    (summary,) = tracker.summary().values()
    assert summary["frames"] == 3 and summary["seconds"] == 1.5
    assert summary["time"] == {"calm": 0.5, UNCERTAIN: 0.5, "happy": 0.5}
    assert summary["first"] == 0.0 and summary["last"] == 1.0 and summary["dominant"] in ("calm", "happy", UNCERTAIN)
    tracker.update([{"box": A, "label": "happy", "probs": {"calm": 0.0, "happy": 1.0}}], time=1.5, dt=2.0)
    assert tracker.summary()[0]["dominant"] == "happy" and tracker.summary()[0]["time"]["happy"] == 2.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=0), "alpha"), (dict(alpha=1.5), "alpha"), (dict(min_hits=0), "min_hits"),
    (dict(hold=-1), "hold"), (dict(hold=6, max_gap=5), r"hold: expected ≤ max_gap \(5\), got 6"),
    (dict(max_gap=1.5), "max_gap: expected an int"), (dict(min_iou=-0.1), "min_iou"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FaceTracker(["a"], **kwargs)


# --- the real clip ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_detections():
    require_faces()
    detector = make_detector("auto")
    return detector.name, [(i, [f.box for f in detector(frame)]) for i, frame in clip_frames()]


def _tracked_counts(detections, **options):
    tracker = FaceTracker(**options)
    return [(i, tracker.assign(boxes)) for i, boxes in detections]


def _shares(counts):
    per_shot = sum(shot_range(i)[0] <= c <= shot_range(i)[1] for i, c in counts) / len(counts)
    applicable = [c for i, c in counts if json_applies(i)]
    in_json = sum(1 <= c <= 2 for c in applicable) / len(applicable)
    return per_shot, in_json


@pytest.mark.slow  # detection on the 275 frames: ~16 s with MTCNN, ~40 s with the Haar fallback here
def test_tracking_smooths_the_clip_face_count(clip_detections):
    """The Stream's defaults (min_hits 2, hold 3). MTCNN (the default detector): ≥ 95 % of the 275 frames within
    the per-shot count and within faces.json's [1, 2] on the shots it describes (measured: 97.8 % and 98.7 %
    tracked; the filtered raw detections are already at 99.6 % / 100 % — tracking costs a few frames at the shot
    cuts, where held boxes of the previous shot linger and new faces wait one frame for confirmation). Over all
    frames faces.json's range cannot be met by a correct detector: the last shot shows four people (see
    tests/data/real_faces.py). The Haar fallback misses profile and turned faces; its measured levels are kept as
    a floor (tracked 53.8 % / 78.5 %; raw 54.9 % / 68.5 %)."""
    name, detections = clip_detections
    assert len(detections) == 275
    raw = _shares([(i, len(b)) for i, b in detections])
    tracked = _shares([(i, len(a)) for i, a in _tracked_counts(detections, min_hits=2, hold=3, max_gap=10)])
    if name == "mtcnn":
        assert tracked[0] >= 0.95 and tracked[1] >= 0.95, f"tracked {tracked}, raw {raw}"
    else:
        assert tracked[1] > raw[1] and tracked[0] >= 0.5 and tracked[1] >= 0.75, f"tracked {tracked}, raw {raw}"
    assert raw[0] >= 0.5  # the detections themselves, for the record in the failure message above


@pytest.mark.slow
def test_track_ids_are_stable_on_the_clip(clip_detections):
    name, detections = clip_detections
    if name != "mtcnn":
        pytest.skip("the Haar fallback loses the singer for ~25 frames (his face turns): ids restart there")
    tracked = dict(_tracked_counts(detections, min_hits=2, hold=3, max_gap=10))
    singer = Counter(a["track"] for i in range(82, 211) for a in tracked[i])
    track, frames = singer.most_common(1)[0]
    assert frames >= 0.95 * 129, f"the singer's longest track covers {frames} of 129 frames: {singer}"
    audience = Counter(a["track"] for i in range(211, 275) for a in tracked[i])
    steady = [k for k, n in audience.items() if n >= 0.9 * 64]
    assert len(steady) == 4, f"expected the four people of the last shot as four steady tracks: {audience}"
