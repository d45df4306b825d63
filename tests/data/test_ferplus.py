import pickle

import pytest
import torch

from fastfer.data.base import DatasetFormatError, EmptySplitError
from fastfer.data.ferplus import NOT_A_FACE, UNKNOWN, FERPlus, majority_vote, vote_distribution
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


@pytest.mark.filterwarnings("ignore:FERPlus train.*12 columns:RuntimeWarning")  # tested below
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


# label_mode: distributions over the 10 vote columns, worked out by hand from the rule in vote_distribution
SOFT = {  # counts: (probability / crossentropy, multi_target); None = dropped
    "happy_6_of_10": ([0, 6, 4, 0, 0, 0, 0, 0, 0, 0], ({1: .6, 2: .4}, {1: .6, 2: .4})),
    "tie": ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], ({0: .5, 1: .5}, {0: .5, 1: .5})),
    # ones removed → S = 9: the tie group of three 2s makes 4 taken (> 3); only neutral has ≥ 30 %, 3 ≤ 4.5
    "no_majority": ([3, 2, 2, 2, 1, 0, 0, 0, 0, 0], (None, None)),
    "unknown_first": ([2, 0, 0, 0, 0, 0, 0, 0, 8, 0], (None, None)),
    # neutral 6 < 75 % of 9, then unknown ends the walk; multi: unknown has ≥ 30 % but is left out
    "unknown_after": ([6, 0, 0, 0, 0, 0, 0, 0, 3, 0], ({0: 1.0}, {0: 1.0})),
    "two_cover": ([4, 3, 2, 1, 0, 0, 0, 0, 0, 0], ({0: 4 / 7, 1: 3 / 7}, {0: 4 / 7, 1: 3 / 7})),
    "three_taken": ([5, 2, 2, 0, 0, 0, 0, 0, 0, 0], ({0: 5 / 9, 1: 2 / 9, 2: 2 / 9}, {0: 1.0})),
    "all_single": ([1] * 10, (None, None)),
}


@pytest.mark.parametrize("mode", ["probability", "crossentropy", "multi_target"])
@pytest.mark.parametrize("case", sorted(SOFT))
def test_vote_distribution_modes(case, mode):
    counts, (prob, multi) = SOFT[case]
    expected = multi if mode == "multi_target" else prob
    got = vote_distribution(counts, mode)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx([expected.get(i, 0.0) for i in range(10)])


def test_vote_distribution_majority_and_bad_mode():
    assert vote_distribution([0, 6, 4, 0, 0, 0, 0, 0, 0, 0], "majority") == [0, 1.0] + [0.0] * 8
    assert vote_distribution([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "majority") is None
    with pytest.raises(ValueError, match="label_mode: expected one of majority, probability"):
        vote_distribution([1] * 10, "soft")


def test_soft_label_reader_returns_canonical_distributions(tmp_path):
    folder = tmp_path / "FER2013Train"
    rows = [[0, 6, 4, 0, 0, 0, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0, 4, 0, 0], [3, 2, 2, 2, 1, 0, 0, 0, 0, 0]]
    lines = []
    for i, counts in enumerate(rows):
        write_image(folder / f"fer{i}.png", 10 * i, size=(48, 48))
        lines.append(f"fer{i}.png," + ",".join(map(str, counts)))
    write_text(folder / "label.csv", "\n".join(lines) + "\n")
    ds = FERPlus(tmp_path, "train", label_mode="probability")
    assert ds.targets == [1, 0] and ds.summary()["dropped"] == {"vote unknown": 1}
    _, soft = ds[0]  # canonical order: neutral, happy, sad, surprise, …: happiness .6, surprise .4
    assert soft.dtype == torch.float32 and soft.tolist() == pytest.approx([0, .6, 0, .4, 0, 0, 0, 0])
    assert ds[1][1].tolist() == pytest.approx([.6, 0, 0, 0, 0, 0, 0, .4])  # contempt is canonical 7
    seven = FERPlus(tmp_path, "train", num_classes=7, label_mode="probability")
    assert seven[1][1].tolist() == pytest.approx([1, 0, 0, 0, 0, 0, 0])  # contempt's share folded away
    assert FERPlus(tmp_path, "train")[0][1] == 1  # majority: an int label
    with pytest.raises(ValueError, match="label_mode: expected one of"):
        FERPlus(tmp_path, "train", label_mode="votes")


def test_layouts_that_disagree_are_counted_not_silent(tmp_path):
    """Folders (7 train images) and fer2013new.csv (3 train faces) side by side: fer0000000 and fer0000004 agree,
    fer0000003 is NF in the folders and a tie in the csv (votes and majority label differ), four images exist
    only in the folders."""
    make_folders(tmp_path, twelve=True)
    make_csv_pair(tmp_path)
    expected = {"compared": True, "label_columns": 12, "only_in_folders": 4, "only_in_csv": 0, "votes_differ": 1,
                "labels_differ": 1}
    for layout in ("folders", "csv"):
        with pytest.warns(RuntimeWarning, match=r"disagree — 1 images with different votes \(1 majority labels\), "
                                                r"4 only in the folders, 0 only in the csv"):
            ds = FERPlus(tmp_path, "train", layout=layout)
        report = ds.summary()["vote_sources"]
        assert {k: report[k] for k in expected} == expected, layout


def test_agreeing_layouts_and_a_lone_twelve_column_file(tmp_path):
    import warnings

    make_folders(tmp_path, twelve=False)
    rows = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    rows += [f"Training,fer{i:07d}.png," + ",".join(str(c) for c in VOTES[n][0]) for i, n in enumerate(ROWS)]
    write_text(tmp_path / "fer2013new.csv", "\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = FERPlus(tmp_path, "train", layout="folders")
    assert ds.summary()["vote_sources"]["votes_differ"] == 0 and ds.summary()["vote_sources"]["only_in_csv"] == 0
    lone = tmp_path / "lone"
    make_folders(lone, twelve=True)
    with pytest.warns(RuntimeWarning, match="12 columns .* an earlier vote release than fer2013new.csv"):
        assert FERPlus(lone, "train").summary()["vote_sources"] == {"compared": False, "label_columns": 12}
