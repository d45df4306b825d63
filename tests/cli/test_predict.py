"""``fastfer predict`` end to end: a folder (recursive) with a photo, a blank image, a broken file and a short
generated video; JSON lines and CSV; annotated outputs; tracking + smoothing; argument errors."""
import argparse
import csv
import json

import numpy as np
import pytest
import torch

import fastfer.models
from fastfer.cli import predict as cli_predict
from fastfer.infer import FaceTracker
from fastfer.train.checkpoint import save_weights

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

MICRO = dict(ir_widths=(8, 8), embed_dim=32, depth=2, num_heads=2, keep_rates=(1.0, 0.9), patch_keep=64)
VIDEO_FRAMES = 6


def _auto_alignment() -> str:
    """What ``--detector auto`` aligns with here: MTCNN's 5 landmarks, or the Haar eye cascade's 2."""
    from fastfer.data.detection import make_detector

    return "5-point" if make_detector("auto").name == "mtcnn" else "2-point"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = fastfer.models.create_model("apvit_tiny", **MICRO)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    cfg = model.pretrained_cfg
    save_weights(root / "run" / "model.safetensors", model.state_dict(), dict(
        model="apvit_tiny", model_kwargs=MICRO, num_classes=7, label_names=list(model.label_names),
        preprocessing=dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"]))))
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    face = skimage_data.astronaut()[:256, 64:320]
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(photos / "astronaut.png"), bgr)
    cv2.imwrite(str(photos / "sub" / "blank.jpg"), np.full((64, 64, 3), 90, np.uint8))
    (photos / "sub" / "broken.png").write_bytes(b"\x89PNG truncated")
    (photos / "sub" / "broken.mp4").write_bytes(b"not a video")
    (photos / "notes.txt").write_text("not an image: skipped in folders")
    video = cv2.VideoWriter(str(photos / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for i in range(VIDEO_FRAMES):  # the face drifts right by 3 px a frame
        video.write(np.ascontiguousarray(np.roll(bgr, 3 * i, axis=1)))
    video.release()
    return root


def _run(argv):
    parser = argparse.ArgumentParser()
    cli_predict.register(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def test_folder_with_video_to_jsonl_with_annotations(setup, capsys):
    out, ann = setup / "out.jsonl", setup / "annotated"
    rc = _run([str(setup / "photos"), str(setup / "missing.jpg"), "--checkpoint", str(setup / "run"),
               "--out", str(out), "--annotate", str(ann), "--every", "2", "--smooth", "--batch-size", "4",
               "--backend", "torch", "--min-hits", "1"])
    assert rc == 1  # missing.jpg, broken.png and broken.mp4 could not be read
    err = capsys.readouterr().err
    assert "2 images, 3 video frames, 4 faces, 1 without a face, 3 unreadable" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {}
    for r in records:
        by_path.setdefault(r["path"].rsplit("/", 1)[-1], []).append(r)
    assert "no such file" in by_path["missing.jpg"][0]["error"]
    assert "broken.png" in by_path["broken.png"][0]["error"]
    assert "broken.mp4: cannot open (not a video OpenCV can decode)" in by_path["broken.mp4"][0]["error"]
    assert by_path["blank.jpg"][0] == {"path": str(setup / "photos" / "sub" / "blank.jpg"), "faces": [],
                                       "error": "no face found"}
    (photo,) = by_path["astronaut.png"]
    assert len(photo["faces"]) == 1 and photo["faces"][0]["alignment"] == _auto_alignment()
    frames = by_path["clip.avi"]
    assert [r["frame"] for r in frames] == [0, 2, 4] and [r["time"] for r in frames] == [0.0, 0.2, 0.4]
    faces = [r["faces"][0] for r in frames]
    assert [f["track"] for f in faces] == [0, 0, 0]  # one face followed across frames
    assert all(set(f) >= {"raw_label", "raw_probs", "label", "probs"} for f in faces)
    assert faces[1]["box"][0] > faces[0]["box"][0]  # the box follows the drift
    # annotated copies: the photo with a box drawn on it, the video with every frame
    drawn = cv2.imread(str(ann / "photos" / "astronaut.png"))
    assert drawn.shape == (256, 256, 3) and (drawn != cv2.imread(str(setup / "photos" / "astronaut.png"))).any()
    cap = cv2.VideoCapture(str(ann / "photos" / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == VIDEO_FRAMES


def test_csv_rows(setup):
    out = setup / "out.csv"
    assert _run([str(setup / "photos" / "astronaut.png"), str(setup / "photos" / "sub" / "blank.jpg"),
                 "--checkpoint", str(setup / "run" / "model.safetensors"), "--out", str(out),
                 "--backend", "torch"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    assert f"p_{rows[0]['label']}" in rows[0] and rows[0]["alignment"] == _auto_alignment()
    probs = [float(rows[0][f"p_{n}"]) for n in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")]
    assert abs(sum(probs) - 1) < 1e-4 and float(rows[0][f"p_{rows[0]['label']}"]) == max(probs)
    assert rows[1]["error"] == "no face found" and rows[1]["label"] == ""


def test_explain_writes_the_pooling_overlay(setup):
    from matplotlib.image import imread

    target = setup / "explain"
    assert _run([str(setup / "photos" / "astronaut.png"), "--checkpoint", str(setup / "run"), "--explain",
                 str(target), "--backend", "torch", "--out", str(setup / "e.jsonl")]) == 0
    png = imread(str(target / "astronaut.png.app.png"))
    assert png.shape[1] > 3 * png.shape[0]  # one row: face, score map, APP kept, after block 1
    record = __import__("json").loads((setup / "e.jsonl").read_text())
    assert "crop" not in record["faces"][0]


def test_model_without_checkpoint_and_detector_none(setup, capsys):
    assert _run([str(setup / "photos" / "sub" / "blank.jpg"), "--model", "apvit_tiny", "--detector", "none",
                 "--backend", "torch"]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err
    record = json.loads(captured.out.splitlines()[-1])
    assert record["faces"][0]["alignment"] == "full"


def test_checkpoint_of_another_model(setup, capsys):
    assert _run([str(setup / "photos"), "--checkpoint", str(setup / "run"), "--model", "apvit"]) == 2
    assert "holds a 'apvit_tiny' model, not 'apvit'" in capsys.readouterr().err


def test_no_face_error_stops_with_the_file_name(setup, capsys):
    rc = _run([str(setup / "photos" / "sub" / "blank.jpg"), "--checkpoint", str(setup / "run"), "--no-face", "error",
               "--backend", "torch"])
    assert rc == 1 and "blank.jpg: no face found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["x.jpg", "--model", "apvit_tiny", "--every", "0"], "--every"),
    (["x.jpg", "--model", "apvit_tiny", "--smooth", "1.5"], "--smooth"),
    (["x.jpg", "--model", "apvit_tiny", "--out", "r.txt"], "--out"),
    (["x.jpg"], "--checkpoint"),
])
def test_argument_errors(argv, match):
    with pytest.raises(SystemExit, match=match):
        _run(argv)


def test_tracker_smooths_per_track():
    labels = ["a", "b"]
    tracker = FaceTracker(labels, alpha=0.5)
    first = tracker.update([{"box": [0, 0, 10, 10], "label": "a", "probs": {"a": 1.0, "b": 0.0}},
                            {"box": [50, 50, 60, 60], "label": "b", "probs": {"a": 0.0, "b": 1.0}}])
    assert [f["track"] for f in first] == [0, 1]
    second = tracker.update([{"box": [51, 50, 61, 60], "label": "a", "probs": {"a": 1.0, "b": 0.0}}])
    assert second[0]["track"] == 1 and second[0]["probs"] == {"a": 0.5, "b": 0.5}
    assert second[0]["raw_label"] == "a"
    third = tracker.update([{"box": [200, 0, 210, 10], "label": "b", "probs": {"a": 0.2, "b": 0.8}}])
    assert third[0]["track"] == 2 and third[0]["probs"] == {"a": 0.2, "b": 0.8}  # a new face starts fresh


def test_camera_that_cannot_be_opened_is_reported(setup, capsys):
    rc = _run(["--camera", "97", "--checkpoint", str(setup / "run"), "--backend", "torch"])
    captured = capsys.readouterr()
    assert rc == 1
    record = json.loads(captured.out.splitlines()[-1])
    assert record == {"path": "camera 97", "faces": [], "error": "camera 97: cannot open (no such camera, or it is "
                                                                "in use)"}
    assert "1 unreadable" in captured.err


def test_unreachable_stream_url_is_reported(setup, capsys):
    rc = _run(["rtsp://127.0.0.1:9/none", "--checkpoint", str(setup / "run"), "--backend", "torch"])
    assert rc == 1
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["path"] == "rtsp://127.0.0.1:9/none" and "cannot open (the stream is unreachable" in record["error"]


def test_video_tracks_summary_and_min_confidence(setup, capsys):
    tracks, out = setup / "tracks.json", setup / "video.jsonl"
    assert _run([str(setup / "photos" / "clip.avi"), "--checkpoint", str(setup / "run"), "--backend", "torch",
                 "--tracks", str(tracks), "--out", str(out), "--min-confidence", "0.99", "--max-frames", "4"]) == 0
    summary = json.loads(tracks.read_text())
    (clip,) = summary.values()
    assert clip["frames_read"] == 4 and clip["frames_processed"] == 4 and clip["dropped"] == 0
    (track,) = clip["tracks"].values()
    assert track["frames"] == 3  # min_hits 2: reported from the second frame on
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["faces"]) for r in records] == [0, 1, 1, 1]
    assert all(f["label"] == "uncertain" for r in records for f in r["faces"])  # a random model is never sure
    assert "1 tracks: #0 uncertain" in capsys.readouterr().err


def test_no_input_is_a_usage_error():
    with pytest.raises(SystemExit, match="give PATH… .* or --camera N"):
        _run(["--model", "apvit_tiny"])


def test_own_label_folder_set_end_to_end(tmp_path, capsys):
    """A 3-class folder set with names of one's own: train one step, then predict and eval use the checkpoint's
    names (the folder names; ``--labels`` in ``fastfer train`` makes the order explicit)."""
    from fastfer.cli import main

    face = cv2.cvtColor(skimage_data.astronaut()[:256, 64:320], cv2.COLOR_RGB2BGR)
    for split in ("train", "test"):
        for i, name in enumerate(["engaged", "bored", "confused"]):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            for k in range(3):
                cv2.imwrite(str(tmp_path / "set" / split / name / f"{k}.png"), np.roll(face, 30 * i + 5 * k, axis=0))
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{tmp_path / 'set'}", "--model", "apvit_tiny", "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--batch-size", "4", "--threads", "1", "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert _run([str(tmp_path / "set" / "test" / "bored" / "0.png"), "--checkpoint", str(run), "--detector", "none",
                 "--backend", "torch"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert list(record["faces"][0]["probs"]) == ["bored", "confused", "engaged"]
    report = json.loads((run / "test_report.json").read_text())
    assert "bored" in json.dumps(report) and "engaged" in json.dumps(report)
