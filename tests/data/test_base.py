import warnings

import cv2
import numpy as np
import pytest

from fastfer.data.base import CorruptImageError, read_image
from fastfer.data.folder import ImageFolderFER
from tests.data.fixtures import tag_of, write_image


def test_read_image_returns_rgb_for_colour_gray_alpha_and_unicode_paths(tmp_path):
    assert read_image(write_image(tmp_path / "c.png", 7))[0, 0].tolist() == [7, 40, 255]
    gray = np.full((5, 6), 99, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image(tmp_path / "g.png")
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and (out == 99).all()
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 10  # blue, nearly transparent: alpha is dropped
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [0, 0, 255]
    path = write_image(tmp_path / "visage_été" / "ü.png", 3)
    assert read_image(path)[0, 0, 0] == 3


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(CorruptImageError, match="cannot read image .*missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CorruptImageError, match="cannot decode image .*bad.jpg \\(17 bytes\\)"):
        read_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty.png \\(0 bytes\\)"):
        read_image(tmp_path / "empty.png")


def make_folder_with_corrupt(tmp_path):
    write_image(tmp_path / "happy" / "0.png", 10)
    (tmp_path / "happy" / "1.png").write_bytes(b"\x89PNG broken")
    write_image(tmp_path / "sad" / "2.png", 30)
    return tmp_path


def test_corrupt_image_skipped_with_one_counted_warning(tmp_path):
    ds = ImageFolderFER(make_folder_with_corrupt(tmp_path))
    with pytest.warns(RuntimeWarning, match="skipping a corrupt image \\(1 so far\\).*1.png"):
        img, label = ds[1]
    assert tag_of(img) == 30 and label == 2  # the next decodable sample stands in
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file does not warn twice
        ds[1]
    assert ds.summary()["corrupt"] == 1 and ds.corrupt[0].endswith("1.png")


def test_corrupt_image_strict_raises_with_path(tmp_path):
    ds = ImageFolderFER(make_folder_with_corrupt(tmp_path), strict=True)
    assert tag_of(ds[0][0]) == 10
    with pytest.raises(CorruptImageError, match="happy/1.png"):
        ds[1]
    with pytest.raises(CorruptImageError, match="happy/1.png"):
        ds.verify()


def test_verify_removes_corrupt_samples(tmp_path):
    ds = ImageFolderFER(make_folder_with_corrupt(tmp_path))
    with pytest.warns(RuntimeWarning):
        bad = ds.verify()
    assert len(bad) == 1 and bad[0].endswith("1.png") and len(ds) == 2 and ds.targets == [1, 2]


def test_all_corrupt_and_index_errors(tmp_path):
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "x.png").write_bytes(b"junk")
    ds = ImageFolderFER(tmp_path)
    with pytest.warns(RuntimeWarning), pytest.raises(CorruptImageError, match="no image of the split could be"):
        ds[0]
    with pytest.raises(IndexError, match="index 5 out of range for ImageFolder 'all' of size 1"):
        ds[5]


def test_transform_is_applied_to_the_uint8_tensor(tmp_path):
    write_image(tmp_path / "fear" / "0.png", 10)
    ds = ImageFolderFER(tmp_path, transform=lambda t: t.float().mean())
    value, label = ds[0]
    assert label == 4 and abs(float(value) - (10 + 40 + 255) / 3) < 1e-4
