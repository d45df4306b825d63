import pytest

from fastfer.data.base import CorruptImageError, DatasetFormatError, EmptySplitError
from fastfer.data.listfile import LabelList, read_label_list
from tests.data.fixtures import tag_of, write_image, write_text


def test_ferformer_list_maps_by_text_label_and_orders_natives_by_id(tmp_path):
    write_image(tmp_path / "img" / "a.png", 10)
    write_image(tmp_path / "img" / "with space.png", 20)
    write_image(tmp_path / "img" / "c.png", 30)
    write_image(tmp_path / "img" / "d.png", 40)
    lst = write_text(tmp_path / "train.txt",
                     "img/a.png  happy  3\n"
                     "\n"
                     "img/with space.png  surprise  0\n"
                     "# a comment line\n"
                     f"{tmp_path / 'img' / 'c.png'}  angry  5\n"  # absolute path
                     "img/d.png  Happiness  3\n")
    ds = LabelList(lst, split="train")
    assert ds.num_classes == 7
    assert ds.native_names == ("surprise", "happy", "angry")  # by id 0, 3, 5
    assert ds.targets == [1, 3, 6, 1]  # canonical: happy, surprise, anger, happy
    assert [tag_of(ds[i][0]) for i in (1, 2, 3)] == [20, 30, 40]


def test_two_column_lists_and_a_separate_root(tmp_path):
    write_image(tmp_path / "faces" / "x.png", 50)
    write_image(tmp_path / "faces" / "y.png", 60)
    lst = write_text(tmp_path / "lists" / "test.txt", "x.png neutral\ny.png Contempt\n")
    ds = LabelList(lst, root=tmp_path / "faces")
    assert ds.num_classes == 8 and ds.targets == [0, 7]
    seven = LabelList(lst, root=tmp_path / "faces", num_classes=7)
    assert seven.targets == [0] and seven.summary()["dropped"] == {"contempt (Contempt) in a 7-class set": 1}


@pytest.mark.parametrize("text, match", [
    ("a.png happy 3\nb.png\n", r"train.txt, line 2: expected '<image path> <text label> <int label>'"),
    ("a.png happy 3\nb.png 4\n", r"line 2: expected '<image path> <text label>"),
    ("a.png grumpy 3\n", r"line 1: unknown label name 'grumpy'"),
    ("a.png happy 3\nb.png happy 4\n", r"line 2: label 'happy' has id 4, but line 1 gave it 3"),
    ("a.png happy 3\nb.png sad 3\n", r"line 2: id 3 names 'sad' here and 'happy' on line 1"),
    ("a.png happy 3\nb.png sad\n", r"line 2: this line lacks the int label column that line 1 has"),
    ("a.png happy -1\n", r"line 1: expected a label id ≥ 0, got '-1' \(column 3\)"),
    ("# only a comment\n", r"line 0: the list holds no image line"),
])
def test_malformed_lists_name_file_and_line(tmp_path, text, match):
    lst = write_text(tmp_path / "train.txt", text)
    with pytest.raises(DatasetFormatError, match=match):
        LabelList(lst)


def test_missing_files_empty_split_and_corrupt_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="image list file: expected a file at"):
        LabelList(tmp_path / "nope.txt")
    lst = write_text(tmp_path / "l.txt", "a.png unknown\n")
    with pytest.raises(EmptySplitError, match="holds no sample; dropped"):
        LabelList(lst)
    write_text(tmp_path / "broken.png", "not a png")
    write_image(tmp_path / "ok.png", 60)
    lst = write_text(tmp_path / "c.txt", "broken.png sad 4\nok.png sad 4\n")
    with pytest.raises(CorruptImageError, match="broken.png"):
        LabelList(lst, strict=True)[0]
    with pytest.warns(RuntimeWarning, match="skipping a corrupt image"):
        img, label = LabelList(lst)[0]  # skipped: the next sample comes back
    assert tag_of(img) == 60 and label == 2
    assert read_label_list(lst)[1] == (2, "ok.png", "sad", 4)
