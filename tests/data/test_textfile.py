"""Label files as people write them: UTF-8 with or without BOM, CRLF; bad bytes and numbers named by file, line,
column; duplicate and conflicting lines handled by the documented rule."""
import warnings

import pytest

from fastfer.data import LabelList, RAFDB
from fastfer.data.base import DatasetFormatError
from fastfer.data.textfile import parse_int, read_lines
from tests.data.fixtures import write_image


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_bom_and_crlf_are_read_as_plain_utf8(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.png", 40)
    lst = _write(tmp_path / "train.lst", b"\xef\xbb\xbfa.png happy 1\r\nb.png sad 2\r\n")
    ds = LabelList(lst)
    assert [s[0] for s in ds.samples] == ["a.png", "b.png"] and len(ds) == 2
    assert read_lines(lst)[0] == (1, "a.png happy 1")


def test_a_latin1_byte_names_file_line_and_column(tmp_path):
    lst = _write(tmp_path / "train.lst", "a.png happy 1\nb\xe9.png sad 2\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match=r"train.lst, line 2: byte 0xe9 at column 2 is not UTF-8"):
        LabelList(lst)


@pytest.mark.parametrize("text", ["²", "3.5", "-", "٣"])
def test_numbers_parse_strictly(tmp_path, text):
    with pytest.raises(DatasetFormatError, match=rf"f.txt, line 4: expected a label in 1..7, got '{text}' \(column 2\)"):
        parse_int(text, tmp_path / "f.txt", 4, "a label", 1, 7, column=2)
    assert parse_int(" 7 ", tmp_path / "f.txt", 4, "a label", 1, 7) == 7


def test_superscript_label_in_a_list_is_a_clear_error(tmp_path):
    lst = _write(tmp_path / "train.lst", "a.png happy ²\n".encode())
    with pytest.raises(DatasetFormatError, match=r"train.lst, line 1: expected a label id ≥ 0, got '²' \(column 3\)"):
        LabelList(lst)


def test_duplicates_are_kept_once_and_conflicts_dropped_with_a_report(tmp_path):
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.png", 40)
    lst = _write(tmp_path / "train.lst", b"a.png happy\na.png happy\nb.png sad\nb.png anger\nc.png fear\n")
    with pytest.warns(RuntimeWarning, match=r"1 duplicate line\(s\) kept once; 1 image\(s\) with conflicting "
                                            r"labels dropped \(e.g. b.png\)"):
        ds = LabelList(lst)
    assert [s[0] for s in ds.samples] == ["a.png", "c.png"]
    assert ds.dropped["image listed with different labels: dropped"] == 2
    with pytest.raises(DatasetFormatError, match=r"1 image\(s\) are listed with different labels, e.g. b.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LabelList(lst, strict=True)


def test_rafdb_list_with_bom_and_superscript(tmp_path):
    root = tmp_path / "RAF-DB" / "basic"
    _write(root / "EmoLabel" / "list_patition_label.txt", b"\xef\xbb\xbftrain_00001.jpg \xc2\xb2\r\n")
    write_image(root / "Image" / "aligned" / "train_00001_aligned.jpg", 40)
    with pytest.raises(DatasetFormatError, match=r"line 1: expected a label in 1..7, got '²' \(column 2\)"):
        RAFDB(tmp_path / "RAF-DB", split="train")
