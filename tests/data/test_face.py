"""fastfer.data.face: detection on a real photograph, 5-point / 2-point / box alignment onto the template,
policies, image conversion and the error paths."""
import sys

import numpy as np
import pytest
import torch

from fastfer.data import face as F

skimage_data = pytest.importorskip("skimage.data")

# The astronaut photograph (scikit-image, 512×512): one frontal face, eyes near (202, 101) and (247, 103)
# (MTCNN landmarks), face box about (180, 62)–(268, 172).
EYES = np.array([[202.0, 101.0], [247.0, 103.0]])


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def haar_faces(astronaut):
    return F.HaarDetector()(astronaut)


def _similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    R = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([R, [[tx], [ty]]])


# --- template ---------------------------------------------------------------------------------------------------


def test_reference_points_for_each_crop_size():
    np.testing.assert_allclose(F.reference_points((112, 96)), F.TEMPLATE_96x112)
    square = F.reference_points(112)
    np.testing.assert_allclose(square, F.TEMPLATE_96x112 + [8.0, 0.0])  # 96 → 112 padded on both sides
    np.testing.assert_allclose(F.reference_points(224), square * 2)
    np.testing.assert_allclose(F.reference_points(56, num_points=2), square[:2] / 2)
    # eyes level and symmetric about the vertical centre line of the square crop
    eyes = square[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.25 and abs(eyes.mean(0)[0] - 56) < 0.1
    with pytest.raises(ValueError, match="num_points"):
        F.reference_points(112, num_points=3)


def test_similarity_transform_recovers_a_known_transform():
    src = F.reference_points(112)
    true = _similarity(23.0, 1.7, 40.0, -12.0)
    fitted = F.similarity_transform(src, F.apply_transform(true, src))
    np.testing.assert_allclose(fitted, true, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = F.reference_points(112)
    mirrored = src * [-1.0, 1.0]  # a reflection cannot be reached by rotation + scale + translation
    m = F.similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


@pytest.mark.parametrize("src, match", [(np.zeros((5, 2)), "coincide"), (np.zeros((1, 2)), "N ≥ 2")])
def test_similarity_transform_errors(src, match):
    with pytest.raises(ValueError, match=match):
        F.similarity_transform(src, src + 1)


# --- alignment --------------------------------------------------------------------------------------------------


def _dot_image(points, shape=(300, 340)):
    """Black image with a bright 7×7 Gaussian blob centred (sub-pixel) at each point."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def _blob_centres(crop, points, radius=6):
    """Intensity-weighted centre of the crop around each expected point."""
    gray = crop[..., 0].astype(np.float64)
    out = []
    for x, y in points:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        patch = gray[max(y0, 0):y0 + 2 * radius + 1, max(x0, 0):x0 + 2 * radius + 1]
        yy, xx = np.mgrid[max(y0, 0):y0 + 2 * radius + 1, max(x0, 0):x0 + 2 * radius + 1]
        out.append([(xx * patch).sum() / patch.sum(), (yy * patch).sum() / patch.sum()])
    return np.array(out)


@pytest.mark.parametrize("size", [112, 224])
def test_alignment_maps_given_landmarks_onto_the_template(size):
    """Landmarks placed in an image by a rotated, scaled, shifted template come out on the template: both the
    fitted transform (< 1e-6 px) and the warped pixels (blob centres < 1 px)."""
    template = F.reference_points(size)
    to_image = _similarity(-17.0, 1.9 * 112 / size, 70.0, 40.0)
    landmarks = F.apply_transform(to_image, template)
    face = F.Face((0, 0, 1, 1), landmarks)
    matrix, kind = F.alignment_matrix(face, (size, size))
    assert kind == "5-point"
    assert np.abs(F.apply_transform(matrix, landmarks) - template).max() < 1e-6
    crop, kind = F.align_face(_dot_image(landmarks), face, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    err = np.abs(_blob_centres(crop, template) - template).max()
    assert err < 1.0, f"aligned landmarks are {err:.2f} px off the template"


def test_alignment_with_noisy_landmarks_is_the_least_squares_fit():
    """Oracle: a similarity x' = a·x − b·y + tx, y' = b·x + a·y + ty is linear in (a, b, tx, ty), so
    np.linalg.lstsq gives the least-squares fit independently of the SVD solution."""
    rng = np.random.default_rng(0)
    template = F.reference_points(112)
    landmarks = F.apply_transform(_similarity(5, 2.0, 30, 20), template) + rng.normal(0, 1.5, (5, 2))
    matrix, _ = F.alignment_matrix(F.Face((0, 0, 1, 1), landmarks), (112, 112))
    x, y = landmarks[:, 0], landmarks[:, 1]
    one, zero = np.ones(5), np.zeros(5)
    A = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(A, np.concatenate([template[:, 0], template[:, 1]]), rcond=None)
    np.testing.assert_allclose(matrix, [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_two_point_eye_alignment_puts_the_eyes_on_the_template():
    eyes = np.array([[120.0, 90.0], [170.0, 110.0]])  # tilted face
    matrix, kind = F.alignment_matrix(F.Face((100, 60, 200, 180), eyes), (112, 112))
    assert kind == "2-point"
    np.testing.assert_allclose(F.apply_transform(matrix, eyes), F.reference_points(112, 2), atol=1e-9)


def test_box_alignment_estimates_the_eyes(astronaut, haar_faces):
    """A box alone (no landmarks) puts the astronaut's real eyes within 4 px of the template's eyes."""
    box = haar_faces[0].box
    matrix, kind = F.alignment_matrix(F.Face(box), (112, 112))
    assert kind == "box"
    err = np.abs(F.apply_transform(matrix, EYES) - F.reference_points(112, 2)).max()
    assert err < 4.0, f"box-only alignment misplaces the eyes by {err:.1f} px"


def test_alignment_rejects_bad_landmarks_and_boxes():
    with pytest.raises(ValueError, match="landmarks"):
        F.alignment_matrix(F.Face((0, 0, 10, 10), np.zeros((3, 2))), (112, 112))
    with pytest.raises(ValueError, match="box"):
        F.alignment_matrix(F.Face((10, 10, 5, 20)), (112, 112))


# --- detection on a real photograph -----------------------------------------------------------------------------


def test_haar_finds_the_astronaut_face_and_eyes(haar_faces):
    assert len(haar_faces) == 1
    x1, y1, x2, y2 = haar_faces[0].box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 205 < cx < 245 and 95 < cy < 135, f"face centre ({cx:.0f}, {cy:.0f}) outside the face region"
    assert 70 < x2 - x1 < 130
    eyes = haar_faces[0].landmarks
    assert eyes is not None and eyes.shape == (2, 2)
    assert np.abs(eyes - EYES).max() < 6, f"eye centres {eyes.tolist()} far from {EYES.tolist()}"


def test_haar_on_a_downscaled_copy_scales_boxes_back(astronaut, haar_faces):
    faces = F.HaarDetector(max_side=256)(astronaut)  # detection runs at half size
    assert len(faces) == 1
    assert np.abs(np.subtract(faces[0].box, haar_faces[0].box)).max() < 12


def test_haar_finds_nothing_in_a_blank_image():
    assert F.HaarDetector()(np.full((120, 160, 3), 128, np.uint8)) == []


def test_mtcnn_finds_box_and_five_landmarks(astronaut):
    pytest.importorskip("facenet_pytorch")
    small = astronaut[::2, ::2].copy()  # 256²: MTCNN is slow on a shared CPU
    faces = F.MTCNNDetector(min_face_size=30)(small)
    assert len(faces) == 1 and faces[0].score > 0.9
    assert faces[0].landmarks.shape == (5, 2)
    assert np.abs(faces[0].landmarks[:2] * 2 - EYES).max() < 6


def test_mtcnn_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(ImportError, match="facenet-pytorch==2.5.3"):
        F.MTCNNDetector()


def test_opencv_5_is_refused_with_the_fix(monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "__version__", "5.0.0")
    with pytest.raises(RuntimeError, match="<5"):
        F.HaarDetector()


def test_make_detector():
    assert F.make_detector("none") is None and F.make_detector(None) is None
    assert isinstance(F.make_detector("haar"), F.HaarDetector)
    fn = lambda image: []  # noqa: E731
    assert F.make_detector(fn) is fn
    with pytest.raises(ValueError, match="detector"):
        F.make_detector("yolo")


# --- policies and given faces -----------------------------------------------------------------------------------


def test_policies():
    small, big = F.Face((0, 0, 10, 10)), F.Face((0, 0, 30, 30))
    assert F.apply_policies([small, big], "skip", "all") == [small, big]
    assert F.apply_policies([small, big], "skip", "largest") == [big]
    assert F.apply_policies([], "skip", "all") == []
    with pytest.raises(F.MultipleFacesError, match="photo.jpg: 2 faces"):
        F.apply_policies([small, big], "skip", "error", "photo.jpg")
    with pytest.raises(F.NoFaceError, match="photo.jpg: no face"):
        F.apply_policies([], "error", "all", "photo.jpg")
    with pytest.raises(ValueError, match="no_face"):
        F.apply_policies([], "ignore", "all")
    with pytest.raises(ValueError, match="multi_face"):
        F.apply_policies([], "skip", "first")


def test_faces_from_arguments():
    faces = F.faces_from_arguments([[1, 2, 11, 22]], None)
    assert faces[0].box == (1, 2, 11, 22) and faces[0].landmarks is None
    lm = F.reference_points(112)
    faces = F.faces_from_arguments(None, [lm])
    x1, y1, x2, y2 = faces[0].box
    assert x1 < lm[:, 0].min() and x2 > lm[:, 0].max() and y1 < lm[:, 1].min() and y2 > lm[:, 1].max()
    assert F.faces_from_arguments([], None) == []
    with pytest.raises(ValueError, match="boxes"):
        F.faces_from_arguments([[1, 2, 3]], None)
    with pytest.raises(ValueError, match="x1 < x2"):
        F.faces_from_arguments([[5, 5, 1, 9]], None)
    with pytest.raises(ValueError, match="as many boxes"):
        F.faces_from_arguments([[0, 0, 5, 5]], [lm, lm])
    with pytest.raises(ValueError, match="landmarks"):
        F.faces_from_arguments(None, [np.zeros((4, 2))])


# --- image conversion and reading -------------------------------------------------------------------------------


def test_as_rgb_uint8_accepts_the_usual_image_types():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert F.as_rgb_uint8(rgb) is not None and np.array_equal(F.as_rgb_uint8(rgb), rgb)
    assert np.array_equal(F.as_rgb_uint8(np.dstack([rgb, rgb[..., :1]])), rgb)  # RGBA: alpha dropped
    assert np.array_equal(F.as_rgb_uint8(rgb[..., 0]), np.repeat(rgb[..., :1], 3, 2))  # gray
    assert np.array_equal(F.as_rgb_uint8(rgb / 255.0), rgb)  # float in [0, 1]
    assert np.array_equal(F.as_rgb_uint8(Image.fromarray(rgb)), rgb)
    assert np.array_equal(F.as_rgb_uint8(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)


@pytest.mark.parametrize("bad, match", [
    ([[1, 2], [3, 4]], "expected a path, numpy array"),
    (np.zeros((4, 4, 3), np.int32), "dtype uint8"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (torch.zeros(2, 4, 4), r"\(3, H, W\)"),
])
def test_as_rgb_uint8_errors(bad, match):
    with pytest.raises(TypeError, match=match):
        F.as_rgb_uint8(bad, "images[0]")


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        F.read_image(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(OSError, match="broken.png"):
        F.read_image(broken)
