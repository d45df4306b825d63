import pickle

import pytest

from fastfer.data.base import DatasetFormatError, EmptySplitError
from fastfer.data.expw import ExpW
from tests.data.fixtures import write_text


def make_expw(tmp_path, n_images=10):
    import cv2
    import numpy as np

    lines = []
    (tmp_path / "image" / "origin").mkdir(parents=True)
    for i in range(n_images):
        img = np.zeros((60, 80, 3), np.uint8)  # BGR scene; the face box region gets its own colour
        img[10:30, 20:50] = (255, 40, 100 + i)
        assert cv2.imwrite(str(tmp_path / "image" / "origin" / f"scene_{i}.jpg"), img)
        # top left right bottom confidence label; label i % 7 in FER2013 order
        lines.append(f"scene_{i}.jpg 0 10 20 50 30 {90 - i} {i % 7}")
        lines.append(f"scene_{i}.jpg 1 0 0 10 10 20.5 6")  # a second, low-confidence face in the same scene
    write_text(tmp_path / "label" / "label.lst", "\n".join(lines) + "\n")
    return tmp_path


def test_crop_uses_top_left_right_bottom(tmp_path):
    root = make_expw(tmp_path)
    ds = pickle.loads(pickle.dumps(ExpW(root, "all")))
    assert len(ds) == 20
    img, label = ds[0]
    assert img.shape == (3, 20, 30)  # rows top..bottom = 10..30, cols left..right = 20..50
    assert abs(int(img[0, 10, 15]) - 100) <= 4 and int(img[2, 10, 15]) > 240  # RGB of the box colour
    assert label == 6  # label 0 = angry → canonical anger
    assert ds[1][1] == 0  # label 6 = neutral


def test_min_conf_and_seeded_split_by_image(tmp_path):
    root = make_expw(tmp_path)
    ds = ExpW(root, "all", min_conf=80)
    assert len(ds) == 10 and ds.summary()["dropped"] == {"box confidence below min_conf=80": 10}
    parts = {s: ExpW(root, s, fractions=(0.6, 0.2, 0.2), seed=3) for s in ("train", "val", "test")}
    images = {s: set(p.images_in_split) for s, p in parts.items()}
    assert [len(images[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not (images["train"] & images["val"]) and not (images["train"] & images["test"])
    assert sum(len(p) for p in parts.values()) == 20  # both faces of a scene stay in one split
    again = ExpW(root, "val", fractions=(0.6, 0.2, 0.2), seed=3)
    assert again.images_in_split == parts["val"].images_in_split
    other = ExpW(root, "val", fractions=(0.6, 0.2, 0.2), seed=4)
    assert other.split_record() == {"dataset": "ExpW", "split": "val", "seed": 4, "fractions": [0.6, 0.2, 0.2],
                                    "min_conf": 0.0, "images": 2, "faces": 4}


@pytest.mark.parametrize("line,msg", [
    ("a.jpg 0 10 20 50", "expected 8 fields .*got 5"),
    ("a.jpg 0 10 20 x 30 90 1", "expected numeric box and confidence"),
    ("a.jpg 0 10 20 50 30 90 7", "expected a label in 0..6, got '7'"),
    ("a.jpg 0 30 20 50 10 90 1", "expected a box with 0 ≤ top < bottom .* got 30 20 50 10"),
])
def test_malformed_lines(tmp_path, line, msg):
    root = make_expw(tmp_path, n_images=1)
    path = root / "label" / "label.lst"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DatasetFormatError, match=rf"label.lst, line 3: {msg}"):
        ExpW(root, "all")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ExpW label file: expected a file at .*label.lst"):
        ExpW(tmp_path)
    root = make_expw(tmp_path, n_images=1)
    with pytest.raises(ValueError, match="fractions: expected three"):
        ExpW(root, fractions=(0.5, 0.5))
    with pytest.raises(EmptySplitError, match="ExpW: split 'all'"):
        ExpW(root, "all", min_conf=1000)
    write_text(root / "label" / "label.lst", "scene_0.jpg 0 100 100 120 120 90 1\n")  # box outside the 80×60 image
    ds = ExpW(root, "all", strict=True)
    with pytest.raises(OSError, match="face box top=100 .* lies outside image .*scene_0.jpg of size 80×60"):
        ds[0]
