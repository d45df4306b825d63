import pickle

import numpy as np
import pytest
import torch

from fastfer.data.synthetic import SyntheticExpressions, contact_sheet, save_contact_sheet, synthetic_image
from fastfer.data.synthetic_draw import EXPRESSION_PARAMS, draw_face


def test_items_shape_labels_and_balance():
    ds = SyntheticExpressions("val", size=14, seed=0)
    img, label = ds[9]
    assert img.shape == (3, 112, 112) and img.dtype == torch.uint8 and label == 2
    assert ds.targets == [i % 7 for i in range(14)] and ds.label_names[2] == "sad"
    assert ds.summary()["class_counts"] == {name: 2 for name in ds.label_names}
    assert ds[-1][1] == 6
    with pytest.raises(IndexError, match="index 14 out of range"):
        ds[14]


def test_deterministic_from_seed_split_index():
    a = SyntheticExpressions("train", size=10, seed=5)
    b = SyntheticExpressions("train", size=10, seed=5)
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][0], a[3][0])
    # an image does not depend on the split size or on what was drawn before
    c = SyntheticExpressions("train", size=1000, seed=5)
    c[7]
    assert torch.equal(c[3][0], a[3][0])
    assert np.array_equal(synthetic_image(5, "train", 3, 3), a.image(3))
    assert torch.equal(pickle.loads(pickle.dumps(a))[3][0], a[3][0])
    # different seed, split or index → different image
    assert not torch.equal(SyntheticExpressions("train", size=10, seed=6)[3][0], a[3][0])
    assert not torch.equal(SyntheticExpressions("test", size=10, seed=5)[3][0], a[3][0])
    assert not torch.equal(a[4][0], a[3][0])


def test_images_vary_and_are_not_degenerate():
    ds = SyntheticExpressions("train", size=21, seed=0, image_size=64)
    imgs = torch.stack([ds[i][0] for i in range(21)]).float()
    assert imgs.shape == (21, 3, 64, 64)
    assert imgs.std(dim=(1, 2, 3)).min() > 10  # every image has structure
    assert imgs.std(dim=0).mean() > 20  # images differ from each other


def test_expressions_differ_for_the_same_identity_and_pose():
    # same generator state → same identity, pose, background; only the expression geometry changes
    faces = {e: draw_face(e, np.random.default_rng(11), 96).astype(np.int16) for e in EXPRESSION_PARAMS}
    names = list(faces)
    changed = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = np.abs(faces[a] - faces[b]).max(axis=-1)
            changed[a, b] = int((diff > 25).sum())
            ys, xs = np.nonzero(diff > 25)
            # the change sits inside the face (the head spans roughly the middle 80 % of the image)
            assert ys.min() > 5 and ys.max() < 90 and xs.min() > 5 and xs.max() < 90, (a, b)
    assert min(v for (a, b), v in changed.items() if "contempt" not in (a, b)) > 100  # the 7 classes
    assert changed["neutral", "contempt"] > 15  # contempt is one raised corner: a small change


def test_difficulty_zero_is_clean_and_frontal():
    easy = SyntheticExpressions("train", size=7, difficulty=0.0, image_size=64)
    hard = SyntheticExpressions("train", size=7, difficulty=1.0, image_size=64)
    # same identity and background colour, but no pose jitter: every easy face sits on the same spot, so the
    # per-pixel spread across the easy images is smaller than across the full-difficulty ones
    e = torch.stack([easy[i][0] for i in range(7)]).float()
    h = torch.stack([hard[i][0] for i in range(7)]).float()
    assert e.std(dim=0).mean() < h.std(dim=0).mean()
    assert easy.summary()["difficulty"] == 0.0
    with pytest.raises(ValueError, match="difficulty: expected a value in \\[0, 1\\], got 2"):
        SyntheticExpressions(difficulty=2)


def test_eight_classes_and_transform():
    ds = SyntheticExpressions("test", size=16, num_classes=8, transform=lambda t: t.float() / 255)
    img, label = ds[7]
    assert label == 7 and ds.label_names[7] == "contempt" and img.dtype == torch.float32 and img.max() <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="split: expected one of train, val, test, got 'dev'"):
        SyntheticExpressions("dev")
    with pytest.raises(ValueError, match="size: expected a positive int, got 0"):
        SyntheticExpressions(size=0)
    with pytest.raises(ValueError, match="image_size: expected an int ≥ 32, got 16"):
        SyntheticExpressions(image_size=16)
    with pytest.raises(ValueError, match="num_classes: expected 7 or 8, got 5"):
        SyntheticExpressions(num_classes=5)
    with pytest.raises(ValueError, match="expression: expected one of .*got 'bored'"):
        draw_face("bored", np.random.default_rng(0))


def test_contact_sheet_png(tmp_path):
    sheet = contact_sheet(per_class=2, image_size=48, label_width=60)
    assert sheet.shape == (7 * 48, 60 + 2 * 48, 3) and sheet.dtype == np.uint8
    path = save_contact_sheet(tmp_path / "sub" / "sheet.png", per_class=2, image_size=48)
    import cv2
    back = cv2.imread(str(path))
    assert back.shape == (7 * 48, 90 + 2 * 48, 3)
