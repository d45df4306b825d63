import pickle

import numpy as np
import pytest

from fastfer.data.affectnet import AffectNet
from fastfer.data.base import DatasetFormatError, UnknownLabelError
from tests.data.fixtures import tag_of, write_image, write_text

HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
          "arousal\n")
# expression ids: 1 Happy, 7 Contempt, 8 None, 6 Anger, 10 No-Face, 0 Neutral
IDS = [1, 7, 8, 6, 10, 0]


def make_csv(tmp_path, nested=True):
    images = (tmp_path / "Manually_Annotated" / "Manually_Annotated_Images" if nested
              else tmp_path / "Manually_Annotated_Images")
    rows = []
    for i, e in enumerate(IDS):
        rel = f"{100 + i}/img{i}.jpg"
        path = write_image(images / rel, 10 * i, size=(40, 30))
        if i == 0:  # a face box around a differently coloured patch: crop=True must return only the patch
            import cv2
            img = cv2.imread(str(path))
            img[10:30, 5:25] = (255, 40, 200)  # BGR: R = 200
            cv2.imwrite(str(path), img)
        rows.append(f'{rel},5,10,20,20,"1.0;2.0;3.0",{e},0.1,-0.2\n')
    write_text(tmp_path / "Manually_Annotated_file_lists" / "training.csv", HEADER + "".join(rows))
    write_text(tmp_path / "Manually_Annotated_file_lists" / "validation.csv", HEADER + rows[0])
    return tmp_path


def test_csv_layout_8_and_7_classes(tmp_path):
    root = make_csv(tmp_path)
    ds = AffectNet(root, "train", num_classes=8)
    assert ds.layout == "csv" and ds.targets == [1, 7, 6, 0]
    assert ds.summary()["dropped"] == {"non-expression class None": 1, "non-expression class No-Face": 1}
    img, label = ds[2]
    assert label == 6 and abs(tag_of(img) - 30) <= 3 and img.shape == (3, 40, 30)
    seven = AffectNet(root, "train", num_classes=7)
    assert seven.targets == [1, 6, 0] and seven.label_names[-1] == "anger"
    assert "contempt (Contempt) in a 7-class set" in seven.summary()["dropped"]
    assert AffectNet(root, "val").targets == [1]


def test_csv_crop_and_flat_image_folder(tmp_path):
    root = make_csv(tmp_path, nested=False)
    img, label = pickle.loads(pickle.dumps(AffectNet(root, "train", crop=True)))[0]
    assert img.shape == (3, 20, 20) and label == 1 and abs(tag_of(img) - 200) <= 4


def test_csv_errors(tmp_path):
    root = make_csv(tmp_path)
    path = root / "Manually_Annotated_file_lists" / "training.csv"
    path.write_text(path.read_text() + 'x/y.jpg,5,10,20,20,"1",11,0,0\n')
    with pytest.raises(DatasetFormatError, match="training.csv, line 8: expected expression in 0..10, got '11'"):
        AffectNet(root)
    path.write_text(HEADER + 'x/y.jpg,5,10,-3,20,"1",2,0,0\n')
    with pytest.raises(DatasetFormatError, match="line 2: expected a face box .*got \\(5, 10, -3, 20\\)"):
        AffectNet(root, crop=True)
    path.write_text("subDirectory_filePath,expression\n")
    with pytest.raises(DatasetFormatError, match="line 1: expected columns .*missing face_x"):
        AffectNet(root)


def make_npy(tmp_path):
    for split, ids in [("train", [3, 9, 4, 2]), ("val", [5])]:
        base = tmp_path / f"{split}_set"
        for i, e in enumerate(ids):
            write_image(base / "images" / f"{i}.jpg", 20 * i + 5)
            (base / "annotations").mkdir(parents=True, exist_ok=True)
            np.save(base / "annotations" / f"{i}_exp.npy", np.array(str(e)))  # the release stores a string
            np.save(base / "annotations" / f"{i}_val.npy", np.array("0.1"))
    return tmp_path


def test_npy_layout(tmp_path):
    root = make_npy(tmp_path)
    ds = AffectNet(root, "train")
    assert ds.layout == "npy" and ds.targets == [3, 4, 2]  # id 9 (Uncertain) dropped
    assert abs(tag_of(ds[1][0]) - 45) <= 3
    assert AffectNet(root, "val").targets == [5]
    (root / "train_set" / "annotations" / "2_exp.npy").unlink()
    with pytest.raises(FileNotFoundError, match="expression annotation of 2.jpg: expected a file at .*2_exp.npy"):
        AffectNet(root, "train")
    np.save(root / "train_set" / "annotations" / "2_exp.npy", np.array("12"))
    with pytest.raises(DatasetFormatError, match="2_exp.npy, line 1: expected an expression id in 0..10, got 12"):
        AffectNet(root, "train")


def test_folder_layout_ids_not_alphabetical(tmp_path):
    for folder, tag in [("0", 10), ("10", 20), ("2", 30), ("7", 40), ("Happy", 50)]:
        write_image(tmp_path / "train" / folder / "a.png", tag)
    ds = AffectNet(tmp_path, "train", num_classes=8)
    # folders sorted as strings: 0, 10, 2, 7, Happy → ids 0, 10 (dropped), 2, 7, happy by name
    assert ds.layout == "folder" and ds.targets == [0, 2, 7, 1]
    assert [tag_of(ds[i][0]) for i in range(4)] == [10, 30, 40, 50]
    write_image(tmp_path / "train" / "11" / "a.png", 1)
    with pytest.raises(ValueError, match="expected a class id 0..10, got 11"):
        AffectNet(tmp_path, "train")
    (tmp_path / "train" / "11" / "a.png").unlink()
    (tmp_path / "train" / "11").rmdir()
    write_image(tmp_path / "train" / "bored" / "a.png", 1)
    with pytest.raises(UnknownLabelError, match="unknown label name 'bored'"):
        AffectNet(tmp_path, "train")
    (tmp_path / "train" / "bored").rename(tmp_path / "train" / "NF")  # a FERPlus class, not an AffectNet one
    with pytest.raises(UnknownLabelError, match="'NF' is not an AffectNet class"):
        AffectNet(tmp_path, "train")


def test_layout_detection_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected one of Manually_Annotated_file_lists/ .*train_set/"):
        AffectNet(tmp_path)
    with pytest.raises(ValueError, match="num_classes: expected 7 or 8, got 11"):
        AffectNet(tmp_path, num_classes=11)
    with pytest.raises(ValueError, match="split: expected one of .*got 'test'"):
        AffectNet(tmp_path, "test")
