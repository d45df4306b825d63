"""fastfer.train.calibration: temperature fitting (recovers a known over-confidence, lowers NLL and ECE, keeps
the argmax), ECE on hand-worked bins, the checkpoint record, bad inputs."""
import math

import pytest
import torch

from fastfer.train.calibration import (
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    nll,
)


def _calibrated_sample(n=4000, classes=7, seed=0):
    """Logits whose softmax is the true class distribution (labels drawn from it): calibrated at T = 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 1.5
    targets = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, targets


def test_fit_recovers_a_deliberate_over_confidence():
    logits, targets = _calibrated_sample()
    over = logits * 3.0  # an over-confident model: the same ranking, 3× sharper
    t = fit_temperature(over, targets)
    assert 2.7 < t < 3.3, t
    before = expected_calibration_error(over.softmax(-1), targets)
    after = expected_calibration_error((over / t).softmax(-1), targets)
    assert before > 0.15 and after < 0.04 and after < before / 4, (before, after)
    assert nll(over, targets, t) < nll(over, targets) - 0.1
    assert torch.equal((over / t).argmax(1), over.argmax(1))  # accuracy unchanged


def test_fit_on_calibrated_logits_stays_near_one_and_under_confident_goes_below():
    logits, targets = _calibrated_sample(seed=1)
    assert 0.9 < fit_temperature(logits, targets) < 1.1
    assert 0.4 < fit_temperature(logits * 0.5, targets) < 0.6


def test_fit_is_the_nll_minimum():
    logits, targets = _calibrated_sample(n=500, seed=2)
    logits = logits * 2.2
    t = fit_temperature(logits, targets)
    grid = [t * f for f in (0.9, 0.97, 1.03, 1.1)]
    assert all(nll(logits, targets, t) <= nll(logits, targets, g) + 1e-9 for g in grid)


def test_ece_hand_worked():
    # top probabilities .85 (right), .75 (wrong), .65 (right), .55 (wrong); none on a bin edge
    probs = torch.tensor([[0.85, 0.15], [0.25, 0.75], [0.65, 0.35], [0.45, 0.55]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0, 0])
    # 2 bins: all four in (.5, 1]: mean confidence .7, accuracy .5
    assert expected_calibration_error(probs, targets, bins=2) == pytest.approx(0.2)
    # 10 bins: one sample per bin: (|1 − .85| + |0 − .75| + |1 − .65| + |0 − .55|) / 4
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx((0.15 + 0.75 + 0.35 + 0.55) / 4)
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)


def test_calibration_record_is_what_a_checkpoint_stores():
    logits, targets = _calibrated_sample(n=1000, seed=3)
    record = calibration_record(logits * 2.5, targets)
    assert record["method"] == "temperature" and record["samples"] == 1000 and record["split"] == "val"
    assert 2.0 < record["temperature"] < 3.0
    assert record["ece_after"] < record["ece_before"] and record["nll_after"] < record["nll_before"]
    import json

    assert json.loads(json.dumps(record)) == record  # safetensors metadata is JSON


@pytest.mark.parametrize("logits, targets, match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"logits: expected \(N, C\)"),
    (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"targets: expected \(4,\)"),
    (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"class indices in \[0, 2\], got 0..3"),
    (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer class indices"),
    (torch.tensor([[0.0, math.nan]]), torch.tensor([0]), "finite"),
])
def test_bad_inputs(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, targets)
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(torch.eye(2), torch.arange(2), bins=0)
