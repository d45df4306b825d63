import pytest

from fastfer.data.folder import ImageFolderFER
from fastfer.data.split import split_indices, train_val_split
from tests.data.fixtures import write_image


def test_split_indices_stratified_seeded_disjoint():
    targets = [0] * 50 + [1] * 30 + [2] * 2
    train, val = split_indices(targets, 0.2, seed=1)
    assert sorted(train + val) == list(range(82)) and not set(train) & set(val)
    per_class = [sum(1 for i in val if targets[i] == c) for c in range(3)]
    assert per_class == [10, 6, 1]  # round(0.2 * n), at least one of a class with ≥ 2 samples
    assert split_indices(targets, 0.2, seed=1) == (train, val)
    assert split_indices(targets, 0.2, seed=2)[1] != val


def test_split_indices_errors():
    with pytest.raises(ValueError, match="val_fraction: expected 0 < val_fraction < 1, got 1.5"):
        split_indices([0, 1], 1.5)
    with pytest.raises(ValueError, match="expected at least 2 samples"):
        split_indices([0], 0.5)


def test_train_val_split_keeps_metadata(tmp_path):
    for c in ("happy", "sad"):
        for i in range(5):
            write_image(tmp_path / c / f"{i}.png", i)
    ds = ImageFolderFER(tmp_path)
    train, val = train_val_split(ds, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and sorted(val.targets) == [1, 2]
    assert train.label_names == ds.label_names and val.summary()["kept"] == 2
    assert val.summary()["class_counts"]["happy"] == 1
    img, label = val[0]
    assert label == val.targets[0] and img.shape[0] == 3
    with pytest.raises(TypeError, match="expected a reader with a 'targets' list"):
        train_val_split([1, 2, 3])
