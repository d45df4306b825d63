import pytest

from fastfer.data.sfew import SFEW
from tests.data.fixtures import tag_of, write_image

# alphabetical folder index would be Angry 0 … Surprise 6; the reader maps by name instead
FOLDERS = {"Angry": 6, "Disgust": 5, "Fear": 4, "Happy": 1, "Neutral": 0, "Sad": 2, "Surprise": 3}


def make_sfew(tmp_path):
    for split in ("Train", "Val"):
        for i, folder in enumerate(FOLDERS):
            write_image(tmp_path / split / folder / f"{folder.lower()}_{split}.png", 10 * i + (5 if split == "Val"
                                                                                                 else 0))
    return tmp_path


def test_train_and_val_mapped_by_name(tmp_path):
    root = make_sfew(tmp_path)
    train, val = SFEW(root, "train"), SFEW(root, "val")
    assert train.native_names == tuple(FOLDERS)
    assert train.native_to_canonical == tuple(FOLDERS.values()) == (6, 5, 4, 1, 0, 2, 3)
    assert train.targets == list(FOLDERS.values()) and val.targets == train.targets
    img, label = val[4]
    assert label == 0 and tag_of(img) == 45  # Val/Neutral
    assert train.summary()["class_counts"] == {n: 1 for n in train.label_names}


def test_missing_split_folder_and_bad_split(tmp_path):
    (tmp_path / "Train").mkdir()
    with pytest.raises(FileNotFoundError, match="expected a Val/ folder of class folders"):
        SFEW(tmp_path, "val")
    with pytest.raises(ValueError, match="split: expected one of .*got 'test'"):
        SFEW(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="SFEW root: expected a directory at .*missing"):
        SFEW(tmp_path / "missing")
