"""fastfer.data.decode: every valid input kind decodes to the right RGB uint8 picture (files and PIL images of the
same file agree), every bad one fails naming the item, the expected and the actual."""
import numpy as np
import pytest
import torch

from fastfer.data import decode
from fastfer.data.base import CorruptImageError

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")


@pytest.fixture(scope="module")
def rgb():
    """A smooth colour picture (gradients: JPEG and palette quantisation stay close to it)."""
    yy, xx = np.mgrid[0:48, 0:64]
    return np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)


def _save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _close(a, b, tol):
    assert a.shape == b.shape and a.dtype == np.uint8
    err = np.abs(a.astype(int) - b.astype(int)).max()
    assert err <= tol, f"max error {err} > {tol}"


# --- files and PIL images of every mode ---------------------------------------------------------------------------


def test_rgb_gray_rgba_palette_cmyk_files_and_pil_images(tmp_path, rgb):
    pil = Image.fromarray(rgb)
    gray = np.asarray(pil.convert("L"))
    cases = {  # name: (PIL image to save, file kwargs, expected RGB, tolerance)
        "rgb.png": (pil, {}, rgb, 0),
        "gray.png": (pil.convert("L"), {}, np.repeat(gray[..., None], 3, 2), 0),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])), {}, rgb, 0),
        "palette.png": (pil.convert("P", palette=Image.ADAPTIVE, colors=64), {}, rgb, 40),
        "cmyk.jpg": (pil.convert("CMYK"), {"quality": 95}, rgb, 20),
        "rgb.jpg": (pil, {"quality": 95}, rgb, 20),
        "one_bit.png": (pil.convert("1"), {}, None, 0),
    }
    for name, (image, kwargs, expected, tol) in cases.items():
        path = _save(tmp_path, image, name, **kwargs)
        from_file = decode.read_image(path)
        with Image.open(path) as opened:
            from_pil = decode.as_rgb_uint8(opened, name)
        _close(from_file, from_pil, 2)  # OpenCV and Pillow decoders agree
        if expected is not None:
            _close(from_file, expected, tol)
        else:
            assert set(np.unique(from_file)) <= {0, 255}


def test_sixteen_bit_gray_is_scaled_not_clipped_to_white(tmp_path):
    values = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 … 64491
    path = _save(tmp_path, Image.fromarray(values), "gray16.png")
    expected = np.repeat(np.round(values / 257.0).astype(np.uint8)[..., None], 3, 2)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I;16")
        _close(decode.as_rgb_uint8(opened), expected, 1)
        naive = np.asarray(opened.convert("RGB"))
        assert (naive == 255).mean() > 0.9  # what plain convert("RGB") does: everything above 255 turns white
    _close(decode.read_image(path), expected, 1)
    # 16-bit arrays and PIL mode I are read on the same 0..65535 scale
    _close(decode.as_rgb_uint8(values), expected, 1)
    _close(decode.as_rgb_uint8(Image.fromarray(values.astype(np.int32), mode="I")), expected, 1)


def test_sixteen_bit_colour_file(tmp_path, rgb):
    import cv2

    values = rgb.astype(np.uint16) * 257  # 16-bit colour PNG (written by OpenCV: BGR order)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), values[..., ::-1])
    _close(decode.read_image(path), rgb, 1)
    with Image.open(path) as opened:
        _close(decode.as_rgb_uint8(opened), rgb, 1)


def test_exif_orientation_is_applied_to_paths_and_pil_images(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = _save(tmp_path, Image.fromarray(rgb), "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.rot90(rgb, k=-1)  # what a viewer shows: (64, 48)
    from_file = decode.read_image(path)
    with Image.open(path) as opened:
        assert opened.size == (64, 48)  # stored sideways
        from_pil = decode.as_rgb_uint8(opened)
    assert from_file.shape == from_pil.shape == (64, 48, 3)
    _close(from_file, upright, 20)
    _close(from_pil, from_file, 2)


def test_pil_float_mode_follows_the_float_rule():
    values = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    out = decode.as_rgb_uint8(Image.fromarray(values, mode="F"))
    _close(out[..., 0], np.round(values * 255).astype(np.uint8), 1)
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got min 0, max 255"):
        decode.as_rgb_uint8(Image.fromarray(values * 255, mode="F"), "photo")


# --- arrays and tensors ---------------------------------------------------------------------------------------------


def test_arrays_and_tensors_of_every_layout(rgb):
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    alpha = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    same = [rgb, rgb / 255.0, (rgb / 255.0).astype(np.float32), alpha, t, t.float() / 255, t.double() / 255,
            (t.float() / 255).to(torch.bfloat16), torch.from_numpy(alpha).permute(2, 0, 1)]
    for i, image in enumerate(same):
        tol = 1 if getattr(image, "dtype", None) == torch.bfloat16 else 0
        _close(decode.as_rgb_uint8(image, f"case {i}"), rgb, tol)
    gray = rgb[..., 1]
    for image in (gray, gray[..., None], torch.from_numpy(gray), torch.from_numpy(gray)[None]):
        assert np.array_equal(decode.as_rgb_uint8(image), np.repeat(gray[..., None], 3, 2))


def test_value_range_maps_other_scales(rgb):
    assert np.array_equal(decode.as_rgb_uint8(rgb.astype(np.float32), value_range=(0, 255)), rgb)
    assert np.array_equal(decode.as_rgb_uint8(rgb.astype(np.int64) - 128, value_range=(-128, 127)), rgb)
    assert np.array_equal(decode.as_rgb_uint8(rgb / 127.5 - 1, value_range=(-1, 1)), rgb)


@pytest.mark.parametrize("bad, kwargs, error, match", [
    (np.full((4, 4, 3), 200.0), {}, ValueError,
     r"frame 7: expected float64 values in \[0, 1\], got min 200, max 200 \(it looks like 0–255 values: pass "
     r"value_range=\(0, 255\)\)"),
    (np.full((4, 4, 3), -3.0), {}, ValueError, r"frame 7: expected float64 values in \[0, 1\], got min -3"),
    (np.full((4, 4, 3), 300.0), {"value_range": (0, 255)}, ValueError,
     r"expected float64 values in \[0, 255\], got min 300, max 300 \(pass value_range"),
    (np.array([[[np.nan] * 3]]), {}, ValueError, "frame 7: expected finite pixel values"),
    (np.zeros((4, 4, 3), np.int32), {}, TypeError, "frame 7: expected dtype uint8 .* got int32; pass value_range"),
    (np.zeros((4, 4, 3), bool), {}, TypeError, "frame 7: expected dtype uint8 .* got bool"),
    (np.zeros((4, 4, 2), np.uint8), {}, TypeError, r"frame 7: expected an image array .* got shape \(4, 4, 2\)"),
    (np.zeros((0, 4, 3), np.uint8), {}, TypeError, r"got shape \(0, 4, 3\)"),
    (torch.zeros(2, 4, 4), {}, TypeError, r"frame 7: expected a \(3, H, W\), .* got shape \(2, 4, 4\)"),
    (torch.zeros(1, 1, 4, 4), {}, TypeError, r"got shape \(1, 1, 4, 4\)"),
    ([[1, 2], [3, 4]], {}, TypeError, "frame 7: expected a path, numpy array, PIL image or torch tensor, got list"),
    (np.zeros((4, 4, 3)), {"value_range": (1, 1)}, ValueError, "value_range: expected finite"),
    (np.zeros((4, 4, 3)), {"value_range": "0-255"}, ValueError, "value_range: expected None or"),
])
def test_bad_arrays_name_the_item_the_expected_and_the_actual(bad, kwargs, error, match):
    with pytest.raises(error, match=match):
        decode.as_rgb_uint8(bad, "frame 7", **kwargs)


def test_float_slack_of_half_a_grey_level():
    assert decode.as_rgb_uint8(np.full((2, 2, 3), 1.0 + 0.4 / 255))[0, 0, 0] == 255
    assert decode.as_rgb_uint8(np.full((2, 2, 3), -0.4 / 255))[0, 0, 0] == 0
    with pytest.raises(ValueError):
        decode.as_rgb_uint8(np.full((2, 2, 3), 1.01))


# --- bad files --------------------------------------------------------------------------------------------------


def test_bad_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.jpg: expected an image file, found nothing"):
        decode.read_image(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="found a folder"):
        decode.read_image(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(CorruptImageError, match=r"broken.png: cannot decode it \(15 bytes\): expected an image "
                                                r"file OpenCV or Pillow can read"):
        decode.read_image(broken)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty.jpg: cannot decode it \(0 bytes\)"):
        decode.read_image(empty)
    with pytest.raises(CorruptImageError, match=r"images\[3\]: cannot decode it at '.*broken.png'"):
        decode.read_image(broken, "images[3]")


def test_gif_and_webp_through_either_decoder(tmp_path, rgb):
    for name in ("anim.gif", "pic.webp"):
        path = _save(tmp_path, Image.fromarray(rgb), name, **({"lossless": True} if name.endswith("webp") else {}))
        out = decode.read_image(path)
        assert out.shape == rgb.shape
        _close(out, rgb, 40 if name.endswith("gif") else 0)


def test_load_image_dispatches_paths_and_arrays(tmp_path, rgb):
    path = _save(tmp_path, Image.fromarray(rgb), "a.png")
    assert np.array_equal(decode.load_image(path), rgb)
    assert np.array_equal(decode.load_image(str(path)), rgb)
    assert np.array_equal(decode.load_image(rgb), rgb)
