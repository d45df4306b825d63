import math
from collections import Counter

import pytest

from fastfer.data.sampler import ClassBalancedSampler, class_repeat_factors, repeat_indices

# 100 samples: class 0 ×80, class 1 ×15, class 2 ×4, class 3 ×1 (interleaved so order matters little)
TARGETS = [0] * 80 + [1] * 15 + [2] * 4 + [3]


def test_sqrt_repeat_factors_by_hand():
    r = class_repeat_factors(TARGETS, 0.15, "sqrt")
    # f = 0.8, 0.15, 0.04, 0.01 → sqrt(0.15 / f) = 0.433 → 1, 1.0, 1.936, 3.873
    assert r[0] == 1.0 and r[1] == pytest.approx(1.0)
    assert r[2] == pytest.approx(math.sqrt(3.75)) and r[3] == pytest.approx(math.sqrt(15))
    counts = Counter(repeat_indices(TARGETS, 0.15, "sqrt").tolist())
    assert [counts[i] for i in (0, 79, 80, 94, 95, 98, 99)] == [1, 1, 1, 1, 2, 2, 4]
    assert sum(counts.values()) == 80 + 15 + 4 * 2 + 4  # 107


def test_reciprocal_repeat_factors_by_hand():
    targets = [0] * 6 + [1] * 3 + [2] * 2
    r = class_repeat_factors(targets, method="reciprocal")
    assert r == pytest.approx({0: 1.0, 1: 2.0, 2: 3.0})  # max f / f
    counts = Counter(repeat_indices(targets, method="reciprocal").tolist())
    assert [counts[i] for i in (0, 6, 9)] == [1, 2, 3]  # 6/11 ÷ 2/11 = 2.9999999999999996 still repeats 3×


def test_epoch_covers_the_repeated_list_and_is_seeded():
    s = ClassBalancedSampler(TARGETS, 0.15, seed=7)
    s.set_epoch(0)
    e0 = list(s)
    assert len(s) == 107 and Counter(e0) == Counter(repeat_indices(TARGETS).tolist())
    assert list(s) == e0 and e0 != sorted(e0)
    s.set_epoch(1)
    assert list(s) != e0
    unshuffled = ClassBalancedSampler(TARGETS, shuffle=False)
    assert list(unshuffled) == repeat_indices(TARGETS).tolist()


def test_ddp_shards_are_disjoint_and_padded():
    shards = [ClassBalancedSampler(TARGETS, 0.15, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(5)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 54  # ceil(107 / 2), one padded sample
    full = Counter(repeat_indices(TARGETS).tolist())
    assert sum((Counter(a) + Counter(b) - full).values()) == 1  # only the pad is extra
    dropped = [ClassBalancedSampler(TARGETS, seed=3, num_replicas=2, rank=r, drop_last=True) for r in (0, 1)]
    assert [len(d) for d in dropped] == [53, 53]


def test_resume_mid_epoch_and_state_dict():
    s = ClassBalancedSampler(TARGETS, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=40)
    assert list(s) == full[40:] and len(s) == 67
    t = ClassBalancedSampler(TARGETS, seed=99)
    t.load_state_dict(s.state_dict())
    assert list(t) == full[40:]


def test_errors():
    with pytest.raises(ValueError, match="method: expected 'sqrt' or 'reciprocal', got 'log'"):
        class_repeat_factors([0, 1], method="log")
    with pytest.raises(ValueError, match="oversample_thr: expected a positive"):
        class_repeat_factors([0, 1], 0.0)
    with pytest.raises(ValueError, match="expected at least one sample"):
        class_repeat_factors([])
    with pytest.raises(ValueError, match="expected 0 ≤ rank < num_replicas, got rank=2, num_replicas=2"):
        ClassBalancedSampler(TARGETS, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="start: expected 0 ≤ start ≤ 107"):
        ClassBalancedSampler(TARGETS).set_epoch(0, start=500)
