import pytest

from fastfer.data.base import EmptySplitError, UnknownLabelError
from fastfer.data.folder import ImageFolderFER
from tests.data.fixtures import tag_of, write_image, write_text


def test_class_folders_by_name_with_drops_and_nested_files(tmp_path):
    write_image(tmp_path / "happiness" / "a.jpg", 10)
    write_image(tmp_path / "happiness" / "sub" / "b.png", 20)
    write_image(tmp_path / "Contempt" / "c.png", 30)
    write_image(tmp_path / "unknown" / "d.png", 40)
    write_text(tmp_path / "happiness" / "notes.txt", "not an image")
    ds = ImageFolderFER(tmp_path)
    assert ds.num_classes == 8 and not ds.own_labels  # a contempt folder makes it an 8-class set
    assert ds.native_names == ("Contempt", "happiness", "unknown")
    assert ds.native_to_canonical == (7, 1, -1)
    assert ds.targets == [7, 1, 1]
    assert ds.summary()["dropped"] == {"non-expression class unknown": 1}
    tags = [tag_of(ds[i][0]) for i in range(3)]  # folders in order, files walked depth-first
    assert tags[0] == 30 and abs(tags[1] - 10) <= 3 and tags[2] == 20  # a.jpg is JPEG: ±3
    seven = ImageFolderFER(tmp_path, num_classes=7)
    assert seven.targets == [1, 1]


def test_class_map_and_forced_expressions(tmp_path):
    write_image(tmp_path / "class_0" / "a.png", 10)
    write_image(tmp_path / "sad" / "b.png", 20)
    with pytest.raises(UnknownLabelError, match=r"class folder .*class_0: unknown label name 'class_0'.*class_map"):
        ImageFolderFER(tmp_path, labels="expressions")
    with pytest.raises(UnknownLabelError, match="class_0"):
        ImageFolderFER(tmp_path, num_classes=7)  # a class count means expressions (as SFEW reads)
    ds = ImageFolderFER(tmp_path, class_map={"class_0": "Angry"})
    assert ds.targets == [6, 2] and ds.native_names == ("Angry", "sad") and ds.label_names[6] == "anger"


def test_own_labels_from_the_folders(tmp_path):
    for i, name in enumerate(["engaged", "bored", "confused"]):
        write_image(tmp_path / name / f"{i}.png", 10 * i + 5)
        write_image(tmp_path / name / f"{i}b.png", 10 * i + 6)
    ds = ImageFolderFER(tmp_path)
    assert ds.own_labels and ds.label_names == ("bored", "confused", "engaged") and ds.num_classes == 3
    assert ds.targets == [0, 0, 1, 1, 2, 2]
    image, label = ds[4]
    assert label == 2 and tag_of(image) == 5  # engaged/0.png
    assert ds.summary()["class_counts"] == {"bored": 2, "confused": 2, "engaged": 2}


def test_own_labels_given_in_order_drop_unlisted_folders(tmp_path):
    for i, name in enumerate(["Pain", "no_pain", "blurry"]):
        write_image(tmp_path / name / f"{i}.png", 10 * i + 5)
    ds = ImageFolderFER(tmp_path, labels=["pain", "no_pain", "unsure"])
    assert ds.label_names == ("pain", "no_pain", "unsure")
    assert sorted(ds.targets) == [0, 1]  # folders matched case-insensitively; "unsure" has no folder here
    assert ds.summary()["dropped"] == {"folder blurry not in labels": 1}
    assert ds.summary()["class_counts"] == {"pain": 1, "no_pain": 1, "unsure": 0}


def test_mixed_folders_warn_and_become_own_labels(tmp_path):
    write_image(tmp_path / "happy" / "a.png", 10)
    write_image(tmp_path / "hapy" / "b.png", 20)  # a typo
    with pytest.warns(RuntimeWarning, match=r"folders \['hapy'\] are not expression names"):
        ds = ImageFolderFER(tmp_path)
    assert ds.own_labels and ds.label_names == ("happy", "hapy")


@pytest.mark.parametrize("labels, match", [
    ("emotions", "labels: expected None, 'expressions' / 'folders'"),
    (["only"], "at least 2"),
    (["a", "A"], "distinct"),
    (["x", "y"], r"none of \['x', 'y'\] is a class folder"),
])
def test_bad_labels(tmp_path, labels, match):
    write_image(tmp_path / "cats" / "a.png", 10)
    write_image(tmp_path / "dogs" / "a.png", 10)
    with pytest.raises(ValueError, match=match):
        ImageFolderFER(tmp_path, labels=labels)
    with pytest.raises(ValueError, match="num_classes: only for expression folders"):
        ImageFolderFER(tmp_path, labels="folders", num_classes=7)


def test_empty_root_and_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected one sub-folder per class, found none"):
        ImageFolderFER(tmp_path)
    (tmp_path / "sad").mkdir()
    with pytest.raises(EmptySplitError, match="ImageFolder: split 'all' .* holds no sample"):
        ImageFolderFER(tmp_path)
