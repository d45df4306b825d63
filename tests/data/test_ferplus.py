import pickle

import pytest

from fastfer.data.base import DatasetFormatError, EmptySplitError
from fastfer.data.ferplus import NOT_A_FACE, UNKNOWN, FERPlus, majority_vote
from tests.data.fixtures import pixels, tag_of, write_image, write_text

# vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
VOTES = {  # name: (counts, expected column by the official rule, worked out by hand)
    "neutral": ([10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),
    "happy_6_of_10": ([0, 6, 4, 0, 0, 0, 0, 0, 0, 0], 1),
    "tie": ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], UNKNOWN),                # 5 is not > 10 / 2
    "outliers_removed": ([4, 1, 1, 1, 1, 1, 1, 0, 0, 0], 0),         # ones dropped: S = 4, 4 > 2
    "no_majority": ([3, 2, 2, 2, 1, 0, 0, 0, 0, 0], UNKNOWN),        # S = 9, 3 ≤ 4.5
    "not_a_face": ([0, 0, 0, 0, 0, 0, 0, 0, 1, 9], NOT_A_FACE),
    "unknown": ([2, 0, 0, 0, 0, 0, 0, 0, 8, 0], UNKNOWN),
    "contempt": ([0, 0, 0, 0, 0, 0, 0, 7, 0, 3], 7),
    "all_single": ([1] * 10, UNKNOWN),                               # S = 0 after outlier removal
    "surprise": ([0, 0, 9, 1, 0, 0, 0, 0, 0, 0], 2),
}


@pytest.mark.parametrize("case", sorted(VOTES))
def test_majority_vote(case):
    counts, expected = VOTES[case]
    assert majority_vote(counts) == expected


def test_majority_vote_wrong_length():
    with pytest.raises(ValueError, match="expected 10 vote counts, got 8"):
        majority_vote([1] * 8)


ROWS = ["neutral", "tie", "happy_6_of_10", "not_a_face", "contempt", "surprise", "unknown"]
KEPT = {"neutral": 0, "happy_6_of_10": 1, "contempt": 7, "surprise": 3}  # canonical labels


def make_folders(tmp_path, twelve: bool):
    folder = tmp_path / "FER2013Train"
    lines = []
    for i, name in enumerate(ROWS):
        fname = f"fer{i:07d}.png"
        write_image(folder / fname, 10 * i, size=(48, 48))
        counts = ",".join(str(c) for c in VOTES[name][0])
        lines.append(f'{fname},"(0, 0, 48, 48)",{counts}' if twelve else f"{fname},{counts}")
    write_text(folder / "label.csv", "\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("twelve", [False, True], ids=["11-column", "12-column"])
def test_label_csv_variants(tmp_path, twelve):
    root = make_folders(tmp_path, twelve)
    ds = FERPlus(root, "train")
    assert ds.layout == "folders"
    assert ds.targets == [KEPT[n] for n in ROWS if n in KEPT]
    assert ds.summary()["dropped"] == {"vote unknown": 2, "vote NF": 1}
    img, label = ds[1]  # second kept row = ROWS[2] (happy), tag 20
    assert label == 1 and tag_of(img) == 20
    seven = FERPlus(root, "train", num_classes=7)
    assert 7 not in seven.targets and seven.summary()["dropped"]["contempt (contempt) in a 7-class set"] == 1
    assert seven.label_names[-1] == "anger"


def test_label_csv_errors(tmp_path):
    root = make_folders(tmp_path, False)
    label = root / "FER2013Train" / "label.csv"
    label.write_text(label.read_text() + "fer9.png,1,2,3\n")
    with pytest.raises(DatasetFormatError, match=r"label.csv, line 8: expected 11 fields .* or 12 .*got 4"):
        FERPlus(root, "train")
    label.write_text("fer0.png," + ",".join(["x"] + ["0"] * 9) + "\n")
    with pytest.raises(DatasetFormatError, match="label.csv, line 1: expected a vote count, got 'x'"):
        FERPlus(root, "train")
    label.write_text("fer0.png," + ",".join(["0"] * 9 + ["10"]) + "\n")  # only a non-face
    with pytest.raises(EmptySplitError, match=r"dropped: \{'vote NF': 1\}"):
        FERPlus(root, "train")


def make_csv_pair(tmp_path, extra_fer_row=False):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    new, old = [header], ["emotion,pixels,Usage\n"]
    plan = [("Training", "neutral", "fer0000000.png"), ("Training", "happy_6_of_10", ""),  # empty name: not a face
            ("PublicTest", "surprise", "fer0000002.png"), ("Training", "tie", "fer0000003.png"),
            ("Training", "contempt", "fer0000004.png"), ("PrivateTest", "neutral", "fer0000005.png")]
    for i, (usage, case, name) in enumerate(plan):
        new.append(f"{usage},{name}," + ",".join(str(c) for c in VOTES[case][0]) + "\n")
        old.append(f"0,{pixels(i * 10)},{usage}\n")
    if extra_fer_row:
        old.append(f"0,{pixels(1)},Training\n")
    write_text(tmp_path / "fer2013new.csv", "".join(new))
    write_text(tmp_path / "fer2013.csv", "".join(old))
    return tmp_path


def test_fer2013new_csv_layout(tmp_path):
    root = make_csv_pair(tmp_path)
    train = FERPlus(root, "train")
    assert train.layout == "csv" and train.targets == [0, 7]
    assert train.summary()["dropped"] == {"empty Image name (not a face)": 1, "vote unknown": 1}
    img, _ = train[1]
    assert img.shape == (3, 48, 48) and int(img[0, 0, 0]) == 40  # pixels of row 4 (contempt)
    val = pickle.loads(pickle.dumps(FERPlus(root, "val")))
    assert val.targets == [3] and int(val[0][0][1, 5, 5]) == 20


def test_csv_layout_errors(tmp_path):
    root = make_csv_pair(tmp_path, extra_fer_row=True)
    with pytest.raises(DatasetFormatError, match="fer2013.csv, line 8: more rows than .*fer2013new.csv"):
        FERPlus(root, "train")
    text = (root / "fer2013.csv").read_text().replace("PublicTest", "Training")
    (root / "fer2013.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match="fer2013new.csv, line 4: Usage 'PublicTest' differs from .*line 4"):
        FERPlus(root, "train")
    (root / "fer2013.csv").unlink()
    with pytest.raises(FileNotFoundError, match="FER2013 pixels file .*fer2013.csv"):
        FERPlus(root, "train")
    with pytest.raises(FileNotFoundError, match="FERPlus label file .*fer2013new.csv"):
        FERPlus(make_empty(tmp_path), "train")
    with pytest.raises(ValueError, match="layout: expected 'auto', 'folders' or 'csv', got 'hdf5'"):
        FERPlus(root, layout="hdf5")


def make_empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_missing_image_in_folder_layout_is_skipped_or_strict(tmp_path):
    root = make_folders(tmp_path, False)
    (root / "FER2013Train" / "fer0000000.png").unlink()
    ds = FERPlus(root, "train")
    with pytest.warns(RuntimeWarning, match="skipping a corrupt image"):
        img, label = ds[0]
    assert label == 1 and tag_of(img) == 20  # the next sample stands in
    assert ds.summary()["corrupt"] == 1
    with pytest.raises(OSError, match="fer0000000.png"):
        FERPlus(root, "train", strict=True)[0]
