"""Metrics against values computed by hand."""
import json

import numpy as np
import pytest
import torch

from fastfer.train.metrics import (classification_report, confusion_matrix, format_report, per_class, summarize,
                                   write_report)

# 3 classes, 8 samples:
#   true 0 0 0 1 1 2 2 2
#   pred 0 0 1 1 2 2 2 0
TARGETS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 2, 2, 2, 0]


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = confusion_matrix(TARGETS, PREDS, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert confusion_matrix(torch.tensor(TARGETS), torch.tensor(PREDS), 3).tolist() == cm.tolist()


def test_summary_by_hand():
    s = summarize(confusion_matrix(TARGETS, PREDS, 3))
    # accuracy 5/8; recalls 2/3, 1/2, 2/3; precisions 2/3, 1/2, 2/3 → F1 per class = recall here
    assert s["accuracy"] == pytest.approx(5 / 8)
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert s["n"] == 8


def test_asymmetric_precision_recall_and_absent_class():
    # class 2 never occurs and is never predicted; class 1 is predicted for a class-0 sample
    cm = confusion_matrix([0, 0, 0, 0, 1], [0, 0, 0, 1, 1], 3)
    pc = per_class(cm)
    assert pc["precision"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert pc["recall"].tolist() == pytest.approx([0.75, 1.0, 0.0])
    f1_0 = 2 * 1.0 * 0.75 / 1.75
    f1_1 = 2 * 0.5 * 1.0 / 1.5
    assert pc["f1"].tolist() == pytest.approx([f1_0, f1_1, 0.0])
    s = summarize(cm)
    assert s["mean_class_accuracy"] == pytest.approx((0.75 + 1.0) / 2)  # absent class left out
    assert s["macro_f1"] == pytest.approx((f1_0 + f1_1 + 0.0) / 3)  # every class of the label set counts


def test_report_json_and_text(tmp_path):
    report = classification_report(confusion_matrix(TARGETS, PREDS, 3), ["a", "b", "c"])
    assert report["per_class"]["b"] == {"support": 2, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    text = format_report(report)
    assert "accuracy 0.6250" in text and text.splitlines()[2].startswith("b")
    paths = write_report(report, tmp_path, "val", png=True)
    assert json.loads((tmp_path / "val_report.json").read_text())["accuracy"] == pytest.approx(0.625)
    assert (tmp_path / "val_confusion_matrix.png").stat().st_size > 1000 and len(paths) == 2


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="targets: expected class indices in 0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="preds: expected the shape of targets"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError, match="preds: expected a 1-D array of integer"):
        confusion_matrix([0, 1], np.array([0.5, 1.0]), 3)
    with pytest.raises(ValueError, match="label_names: expected 3 names"):
        classification_report(np.eye(3, dtype=int), ["a", "b"])
