import pytest

from fastfer.data.base import DatasetFormatError, EmptySplitError
from fastfer.data.fer2013 import FER2013
from tests.data.fixtures import pixels, write_text

# emotion (FER2013 order) → canonical: 0 Angry→6, 3 Happy→1, 6 Neutral→0
CSV = ("emotion,pixels,Usage\n"
       f"0,{pixels(10)},Training\n"
       f"3,{pixels(20)},PublicTest\n"
       f"6,{pixels(30)},PrivateTest\n")


def test_usage_splits(tmp_path):
    write_text(tmp_path / "fer2013.csv", CSV)
    for split, label, value in [("train", 6, 10), ("val", 1, 20), ("test", 0, 30)]:
        ds = FER2013(tmp_path, split)
        assert len(ds) == 1 and ds.targets == [label]
        img, y = ds[0]
        assert img.shape == (3, 48, 48) and y == label
        assert int(img.min()) == int(img.max()) == value  # gray expanded to three equal channels


def test_csv_path_and_presplit_files(tmp_path):
    path = write_text(tmp_path / "fer2013.csv", CSV)
    assert FER2013(path, "val").targets == [1]
    pre = tmp_path / "pre"
    write_text(pre / "train.csv", f"emotion,pixels\n5,{pixels(1)}\n1,{pixels(2)}\n")
    ds = FER2013(pre, "train")
    assert ds.targets == [3, 5]  # Surprise → 3, Disgust → 5
    assert ds.summary()["source"].endswith("train.csv")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*fer2013.csv \(or the pre-split .*test.csv\)"):
        FER2013(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="FER2013 root .*expected a directory at .*nope"):
        FER2013(tmp_path / "nope")


@pytest.mark.parametrize("row,msg", [
    (f"7,{pixels(1)},Training", "expected emotion in 0..6, got '7'"),
    (f"2,{pixels(1, 100)},Training", "expected 2304 pixel values, got 100"),
    (f"2,{pixels(300)},Training", "expected pixel values in 0..255, got 300..300"),
    ("2,1 2 x" + " 3" * 2301 + ",Training", "expected integer pixel values, got 'x'"),
    (f"2,{pixels(1)},Validation", "expected Usage in Training, PublicTest, PrivateTest, got 'Validation'"),
    (f"2,{pixels(1)}", "expected 3 fields, got 2"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, msg):
    write_text(tmp_path / "fer2013.csv", CSV + row + "\n")
    with pytest.raises(DatasetFormatError, match=rf"fer2013.csv, line 5: {msg}"):
        FER2013(tmp_path, "train")


def test_bad_header_and_empty_split(tmp_path):
    write_text(tmp_path / "fer2013.csv", "label,pixels,Usage\n")
    with pytest.raises(DatasetFormatError, match="line 1: expected columns emotion, pixels; missing emotion"):
        FER2013(tmp_path)
    write_text(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n" + f"0,{pixels(1)},Training\n")
    with pytest.raises(EmptySplitError, match="FER2013: split 'test'"):
        FER2013(tmp_path, "test")
    with pytest.raises(ValueError, match="split: expected one of train, val, test, got 'valid'"):
        FER2013(tmp_path, "valid")
