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
    assert ds.num_classes == 8  # a contempt folder makes it an 8-class set
    assert ds.native_names == ("Contempt", "happiness", "unknown")
    assert ds.native_to_canonical == (7, 1, -1)
    assert ds.targets == [7, 1, 1]
    assert ds.summary()["dropped"] == {"non-expression class unknown": 1}
    tags = [tag_of(ds[i][0]) for i in range(3)]  # folders in order, files walked depth-first
    assert tags[0] == 30 and abs(tags[1] - 10) <= 3 and tags[2] == 20  # a.jpg is JPEG: ±3
    seven = ImageFolderFER(tmp_path, num_classes=7)
    assert seven.targets == [1, 1]


def test_class_map_and_unknown_folder(tmp_path):
    write_image(tmp_path / "class_0" / "a.png", 10)
    with pytest.raises(UnknownLabelError, match=r"class folder .*class_0: unknown label name 'class_0'.*class_map"):
        ImageFolderFER(tmp_path)
    ds = ImageFolderFER(tmp_path, class_map={"class_0": "Angry"})
    assert ds.targets == [6] and ds.native_names == ("Angry",)


def test_empty_root_and_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected one sub-folder per class, found none"):
        ImageFolderFER(tmp_path)
    (tmp_path / "sad").mkdir()
    with pytest.raises(EmptySplitError, match="ImageFolder: split 'all' .* holds no sample"):
        ImageFolderFER(tmp_path)
