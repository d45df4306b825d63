"""fastfer.viz: every figure is written, has the layout its inputs ask for, and bad inputs are refused."""
import numpy as np
import pytest
import torch

from fastfer import viz

NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")


def _png_shape(path):
    from matplotlib.image import imread

    return imread(path).shape


def test_confusion_matrix_png(tmp_path):
    cm = np.eye(7, dtype=int) * 20 + 1
    path = viz.plot_confusion_matrix(cm, NAMES, tmp_path / "sub" / "cm.png")
    h, w, _ = _png_shape(path)
    assert h > 300 and w > 300
    raw = viz.plot_confusion_matrix(torch.tensor(cm), NAMES, tmp_path / "raw.png", normalize=False)
    assert _png_shape(raw)[:2] == (h, w)


def test_confusion_matrix_with_an_empty_row(tmp_path):
    cm = np.array([[3, 1], [0, 0]])
    assert viz.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "cm.png")


@pytest.mark.parametrize("cm, names, match", [
    (np.ones((2, 3)), ["a", "b"], "square"),
    (np.ones((2, 2)), ["a"], "label_names"),
    (-np.ones((2, 2)), ["a", "b"], "non-negative"),
])
def test_confusion_matrix_errors(tmp_path, cm, names, match):
    with pytest.raises(ValueError, match=match):
        viz.plot_confusion_matrix(cm, names, tmp_path / "cm.png")


def test_probabilities_dict_and_list(tmp_path):
    probs = dict(zip(NAMES, np.full(7, 1 / 7)))
    h7 = _png_shape(viz.plot_probabilities(probs, tmp_path / "p.png"))[0]
    h3 = _png_shape(viz.plot_probabilities(torch.tensor([0.2, 0.5, 0.3]), tmp_path / "q.png"))[0]
    assert h7 > h3  # one bar per class
    with pytest.raises(ValueError, match="probs"):
        viz.plot_probabilities([], tmp_path / "e.png")


def test_app_overlay_draws_one_panel_per_pooling_block(tmp_path):
    B, h, w = 2, 4, 4
    images = torch.rand(B, 3, 32, 32)
    scores = torch.rand(B, h, w)
    kept = torch.tensor([[0, 1, 2, 5, 6, 9, 10, 15]] * B)
    # block 0 keeps everything (not drawn), blocks 1 and 2 drop tokens (drawn)
    blocks = [kept, kept[:, :6], kept[:, :4]]
    base = _png_shape(viz.plot_app_overlay(images, scores, None, tmp_path / "a.png"))
    with_kept = _png_shape(viz.plot_app_overlay(images, scores, kept, tmp_path / "b.png"))
    full = _png_shape(viz.plot_app_overlay(images, scores, kept, tmp_path / "c.png", kept_per_block=blocks,
                                           titles=["x", "y"]))
    assert base[0] == with_kept[0] == full[0]
    col = with_kept[1] - base[1]
    assert col > 100 and abs(full[1] - (with_kept[1] + 2 * col)) <= 4


def test_kept_mask_marks_the_right_cells():
    mask = viz._kept_mask(np.array([0, 5, 11]), 3, 4)
    assert mask.sum() == 3 and mask[0, 0] and mask[1, 1] and mask[2, 3]
    big = viz._upsample_mask(mask, 6, 8)
    assert big.sum() == 12 and big[0:2, 0:2].all() and big[4:6, 6:8].all()
    with pytest.raises(ValueError, match="grid positions"):
        viz._kept_mask(np.array([12]), 3, 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(images=torch.rand(2, 1, 8, 8)), "images"),
    (dict(score_maps=torch.rand(3, 2, 2)), "score_maps"),
    (dict(kept_index=torch.zeros(2)), "kept_index"),
    (dict(kept_per_block=[torch.zeros(3, 2, dtype=torch.long)]), r"kept_per_block\[0\]"),
])
def test_app_overlay_errors(tmp_path, kwargs, match):
    args = dict(images=torch.rand(2, 3, 8, 8), score_maps=torch.rand(2, 2, 2), kept_index=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        viz.plot_app_overlay(path=tmp_path / "x.png", **args)


def test_annotate_image_draws_box_and_label():
    img = np.zeros((100, 120, 3), np.uint8)
    faces = [{"box": [30, 40, 80, 90], "landmarks": [[45, 55], [65, 55]], "label": "happy",
              "probs": {"happy": 0.9}}]
    out = viz.annotate_image(img, faces)
    assert img.sum() == 0  # input untouched
    assert tuple(out[60, 30]) == viz._BOX_COLOUR  # left edge of the box
    assert out[25:40, 30:80].any()  # label above the box
    assert not out[95:, :].any()
    with pytest.raises(TypeError, match="image"):
        viz.annotate_image(img.astype(np.float32), faces)
