import pickle

import pytest

from fastfer.data.base import DatasetFormatError, EmptySplitError
from fastfer.data.rafdb import RAFDB
from tests.data.fixtures import tag_of, write_image, write_text

# (name, RAF label 1..7, expected canonical): 1 Surprise→3, 4 Happiness→1, 7 Neutral→0, 6 Anger→6
ROWS = [("train_00001.jpg", 1, 3), ("train_00002.jpg", 4, 1), ("test_0001.jpg", 7, 0), ("test_0002.jpg", 6, 6)]


def make_raf(tmp_path, nested=True):
    base = tmp_path / "RAF-DB" / "basic" if nested else tmp_path / "basic"
    write_text(base / "EmoLabel" / "list_patition_label.txt", "".join(f"{n} {label}\n" for n, label, _ in ROWS))
    for i, (name, _, _) in enumerate(ROWS):
        stem = name[:-4]
        write_image(base / "Image" / "original" / name, 10 + i)
        write_image(base / "Image" / "aligned" / f"{stem}_aligned.jpg", 50 + i)
        write_image(base / "Image" / "aligned_224" / name, 90 + i)
    # APViT lists carry "_aligned" in some copies; the reader strips it
    write_text(base / "EmoLabel" / "train.txt", "train_00001_aligned.jpg 1\ntrain_00002.jpg 4\n")
    write_text(base / "EmoLabel" / "test.txt", "test_0001.jpg 7\ntest_0002.jpg 6\n")
    return base


def near(a, b):
    return abs(a - b) <= 3  # JPEG


@pytest.mark.parametrize("images,offset", [("aligned", 50), ("original", 10), ("apvit", 90)])
def test_splits_labels_and_images(tmp_path, images, offset):
    base = make_raf(tmp_path)
    root = tmp_path / "RAF-DB"  # the parent of basic/ works too
    train = RAFDB(root, "train", images=images)
    test = RAFDB(base, "test", images=images)
    assert train.targets == [3, 1] and test.targets == [0, 6]
    assert train.label_names == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")
    assert train.native_to_canonical == (3, 4, 5, 1, 2, 6, 0)
    img, label = test[1]
    assert img.dtype.is_floating_point is False and img.shape == (3, 20, 16)
    assert label == 6 and near(tag_of(img), offset + 3)
    assert near(tag_of(train[0][0]), offset)
    assert train.summary()["kept"] == 2 and train.summary()["class_counts"]["surprise"] == 1
    clone = pickle.loads(pickle.dumps(test))  # DataLoader workers started by spawn / forkserver pickle it
    assert clone.targets == test.targets and near(tag_of(clone[1][0]), offset + 3)


def test_custom_aligned_dir_with_either_naming(tmp_path):
    base = make_raf(tmp_path)
    ds = RAFDB(base, "train", images=str(base / "Image" / "aligned_224"))
    assert near(tag_of(ds[1][0]), 91)
    ds = RAFDB(base, "train", images=str(base / "Image" / "aligned"))  # <stem>_aligned.jpg naming
    assert near(tag_of(ds[1][0]), 51)


def test_missing_root_and_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="RAF-DB root: expected a directory at .*nowhere"):
        RAFDB(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="list_patition_label.txt"):
        RAFDB(tmp_path / "empty")
    base = make_raf(tmp_path)
    (base / "EmoLabel" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="EmoLabel/test.txt"):
        RAFDB(base, "test", images="apvit")


def test_bad_arguments(tmp_path):
    base = make_raf(tmp_path)
    with pytest.raises(ValueError, match="split: expected one of .*got 'val'"):
        RAFDB(base, "val")
    with pytest.raises(ValueError, match="images: expected 'aligned', 'original', 'apvit' or an existing dir"):
        RAFDB(base, images="stock100")


@pytest.mark.parametrize("line,msg", [("train_00003.jpg 8", "expected a label in 1..7, got '8'"),
                                      ("train_00003.jpg", "expected '<image name> <label 1..7>'"),
                                      ("train_00003.jpg x", "expected a label in 1..7, got 'x'"),
                                      ("val_00003.jpg 2", "expected a name starting with 'train_' or 'test_'")])
def test_malformed_line_names_file_and_line(tmp_path, line, msg):
    base = make_raf(tmp_path)
    path = base / "EmoLabel" / "list_patition_label.txt"
    path.write_text(path.read_text() + "\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match=rf"list_patition_label.txt, line 6: {msg}") as e:
        RAFDB(base)
    assert e.value.line == 6


def test_empty_split(tmp_path):
    base = make_raf(tmp_path)
    write_text(base / "EmoLabel" / "list_patition_label.txt", "train_00001.jpg 1\n")
    with pytest.raises(EmptySplitError, match="split 'test' .* holds no sample"):
        RAFDB(base, "test")
