"""fastfer.infer.Predictor: detection + alignment + batched classification on arrays, tensors, files and folders;
batched = one by one; checkpoints (and their errors); policies and bad inputs."""
import numpy as np
import pytest
import torch

import fastfer.models
from fastfer.data.face import NoFaceError
from fastfer.infer import Predictor as _Predictor
from fastfer.train.checkpoint import save_weights


def Predictor(*args, amp="off", **kwargs):
    """fastfer's Predictor in fp32 unless a test asks otherwise: its default (amp auto) is bf16 on a CPU with
    AMX / AVX512-BF16, and these tests compare logits exactly."""
    return _Predictor(*args, amp=amp, **kwargs)


skimage_data = pytest.importorskip("skimage.data")


# apvit_tiny made smaller still (same APP + ATP mechanics): ~10× faster on a shared 2-core CPU
MICRO = dict(ir_widths=(8, 8), embed_dim=32, depth=2, num_heads=2, keep_rates=(1.0, 0.9), patch_keep=64)


def tiny_model(seed=0, name="apvit_tiny", **kwargs):
    """A small APViT with random weights and a random (non-zero) head, so classes differ."""
    torch.manual_seed(seed)
    model = fastfer.models.create_model(name, **{**MICRO, **kwargs}).eval()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, device="cpu", backend="torch", batch_size=4)


@pytest.fixture(scope="module")
def astronaut():
    """The upper middle 256×256 of scikit-image's astronaut photograph: one face, centre near (160, 114)
    (a quarter of the pixels of the full photo: Haar detection is 4× faster)."""
    return skimage_data.astronaut()[:256, 64:320].copy()


def _checkpoint_meta(model, name="apvit_tiny"):
    cfg = model.pretrained_cfg
    return dict(model=name, model_kwargs=MICRO, num_classes=model.num_classes, label_names=list(model.label_names),
                preprocessing=dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"]),
                                   alignment="5-point"))


def _assert_same(a, b, atol=1e-5):
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert fa["label"] == fb["label"]
        np.testing.assert_allclose(fa["logits"], fb["logits"], atol=atol)
        if "box" in fa:
            assert fa["box"] == fb["box"] and fa["alignment"] == fb["alignment"]


# --- images with detection --------------------------------------------------------------------------------------


def test_predict_finds_and_classifies_the_astronaut(predictor, astronaut):
    (faces,) = predictor.predict(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face["box"]
    assert 140 < (x1 + x2) / 2 < 180 and 95 < (y1 + y2) / 2 < 135
    points = 5 if predictor.detector_name == "mtcnn" else 2  # detector="auto": MTCNN when facenet-pytorch imports
    assert face["alignment"] == f"{points}-point" and len(face["landmarks"]) == points
    assert list(face["probs"]) == list(predictor.label_names)
    assert abs(sum(face["probs"].values()) - 1) < 1e-5
    assert face["label"] == max(face["probs"], key=face["probs"].get)
    logits = torch.tensor(face["logits"])
    np.testing.assert_allclose(logits.softmax(0).numpy(), list(face["probs"].values()), rtol=1e-5, atol=1e-7)


def test_predict_matches_the_model_on_the_aligned_crop(predictor, model, astronaut):
    """The probabilities are the model's on the aligned, normalised crop (checks preprocessing end to end)."""
    from fastfer.data.face import align_face

    (faces,) = predictor.predict(astronaut)
    det = predictor.detect(astronaut)[0]
    crop, _ = align_face(astronaut, det, 112)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = model((x - mean) / std)[0]
    np.testing.assert_allclose(faces[0]["logits"], expected.numpy(), atol=1e-5)


def test_batched_equals_one_by_one(model, astronaut):
    """Faces of several images classified together (batch 3) equal each image run alone (batch 1)."""
    images = [astronaut, astronaut[:, ::-1].copy(), np.zeros((60, 80, 3), np.uint8), astronaut[20:, 10:240]]
    batched = Predictor(model, device="cpu", batch_size=3).predict(images)
    single = Predictor(model, device="cpu", batch_size=1)
    assert [len(f) for f in batched] == [1, 1, 0, 1]
    for image, faces in zip(images, batched):
        _assert_same(faces, single.predict(image)[0])
    assert batched[0][0]["label"] != "" and batched[0][0]["box"] != batched[1][0]["box"]


def test_predict_files_and_folder(predictor, astronaut, tmp_path):
    import cv2

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "sub" / "b.png"), cv2.cvtColor(astronaut[:, ::-1], cv2.COLOR_RGB2BGR))
    from_files = predictor.predict([folder / "a.png", str(folder / "sub" / "b.png")])
    from_arrays = predictor.predict([astronaut, astronaut[:, ::-1].copy()])
    for a, b in zip(from_files, from_arrays):
        _assert_same(a, b)


def test_predict_tensor_batch_and_pil(predictor, astronaut):
    from PIL import Image

    t = torch.from_numpy(astronaut).permute(2, 0, 1)
    from_uint8 = predictor.predict(torch.stack([t, t]))
    from_float = predictor.predict(t.float() / 255)
    from_pil = predictor.predict([Image.fromarray(astronaut)])
    _assert_same(from_uint8[0], from_uint8[1])
    _assert_same(from_uint8[0], from_float[0])
    _assert_same(from_uint8[0], from_pil[0])


def test_given_boxes_and_landmarks_skip_detection(model, astronaut):
    from fastfer.data.face import reference_points

    predictor = Predictor(model, device="cpu", detector=lambda image: pytest.fail("detector must not run"))
    lm = np.array([[138.0, 101.0], [183.0, 103.0], [161.0, 129.0], [138.0, 139.0], [181.0, 142.0]])
    (faces,) = predictor.predict([astronaut], landmarks=[[lm]])
    assert faces[0]["alignment"] == "5-point"
    (faces,) = predictor.predict([astronaut], boxes=[[[116, 62, 204, 172], [10, 10, 60, 60]]])
    assert [f["alignment"] for f in faces] == ["box", "box"]
    assert reference_points(112).shape == (5, 2)
    with pytest.raises(ValueError, match="boxes: expected one entry per image"):
        predictor.predict([astronaut, astronaut], boxes=[[[0, 0, 5, 5]]])


# --- policies ---------------------------------------------------------------------------------------------------


def test_no_face_policies(model):
    blank = np.zeros((64, 64, 3), np.uint8)
    assert Predictor(model, device="cpu").predict(blank) == [[]]
    (faces,) = Predictor(model, device="cpu", no_face="full").predict(blank)
    assert faces[0]["alignment"] == "full" and faces[0]["box"] == [0.0, 0.0, 64.0, 64.0]
    strict = Predictor(model, device="cpu", no_face="error", detector=lambda image: [])
    with pytest.raises(NoFaceError, match=r"images\[0\]: no face found"):
        strict.predict([blank, blank])
    with pytest.raises(NoFaceError, match=r"clip.mp4#frame3: no face found"):
        strict.predict([blank], names=["clip.mp4#frame3"])


def test_multi_face_largest(model, astronaut):
    boxes = [[[10, 10, 40, 40], [116, 62, 204, 172]]]
    (faces,) = Predictor(model, device="cpu", multi_face="largest").predict([astronaut], boxes=boxes)
    assert len(faces) == 1 and faces[0]["box"] == [116.0, 62.0, 204.0, 172.0]


# --- face crops without detection -------------------------------------------------------------------------------


def test_predict_faces_tensor_list_and_normalized_agree(predictor, model):
    crops = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    from_uint8 = predictor.predict_faces(crops)
    from_float = predictor.predict_faces(crops.float() / 255)
    from_list = predictor.predict_faces([c.permute(1, 2, 0).numpy() for c in crops])
    normalized = predictor.normalize(crops)
    from_norm = predictor.predict_faces(normalized, normalized=True)
    with torch.no_grad():
        expected = model(normalized)
    for results in (from_uint8, from_float, from_list, from_norm):
        np.testing.assert_allclose([r["logits"] for r in results], expected.numpy(), atol=1e-5)


def test_predict_faces_resizes_crops(predictor, astronaut):
    face = torch.from_numpy(astronaut[40:190, 150:280].copy()).permute(2, 0, 1)  # 150×130, a smooth image
    crops = torch.stack([face, face.flip(-1)])
    on_tensor = predictor.predict_faces(crops)
    on_arrays = predictor.predict_faces([c.permute(1, 2, 0).numpy() for c in crops])
    # torch bilinear (half-pixel centres) vs cv2.resize INTER_LINEAR: the same sampling up to uint8 rounding
    np.testing.assert_allclose([r["logits"] for r in on_tensor], [r["logits"] for r in on_arrays], atol=0.1)


def test_detector_none_treats_images_as_crops(model):
    predictor = Predictor(model, device="cpu", detector="none")
    crops = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    faces = predictor.predict(crops)
    assert all(len(f) == 1 and f[0]["alignment"] == "full" and f[0]["box"] == [0, 0, 112, 112] for f in faces)
    _assert_same(predictor.predict_faces(crops), [f[0] for f in faces])


def test_explain_reports_apvit_pooling(predictor, model, astronaut):
    (faces,) = predictor.predict(astronaut, crops=True)
    crop = faces[0]["crop"]
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    details = predictor.explain([crop])
    assert details["app_scores"].shape == (1, 14, 14) and details["app_index"].shape == (1, 64)
    assert [p.shape[1] for p in details["token_positions"]] == [64, 57]  # block 1 keeps int(64 · 0.9)
    kept = set(details["app_index"][0].tolist())
    assert set(details["token_positions"][1][0].tolist()) <= kept  # ATP keeps a subset of APP's patches
    # APP keeps the highest-scoring positions of the map
    scores = details["app_scores"][0].flatten()
    assert scores[list(kept)].min() >= scores[[i for i in range(196) if i not in kept]].max()


def test_explain_needs_a_model_with_details():
    class Plain(torch.nn.Module):
        pretrained_cfg = dict(input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, label_names=("a", "b"))
        num_classes = 2

        def forward(self, x):
            return x.mean((2, 3))[:, :2]

    predictor = Predictor(Plain(), device="cpu", detector="none")
    assert not predictor.can_explain
    assert predictor.predict_faces(torch.zeros(1, 3, 8, 8))[0]["label"] in ("a", "b")
    with pytest.raises(TypeError, match="explain"):
        predictor.explain(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# --- checkpoints ------------------------------------------------------------------------------------------------


def test_checkpoint_file_and_run_folder(model, tmp_path):
    run = tmp_path / "run"
    save_weights(run / "model.safetensors", model.state_dict(), _checkpoint_meta(model))
    crops = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    expected = Predictor(model, device="cpu", detector="none").predict_faces(crops)
    for source in (run / "model.safetensors", run):
        p = Predictor(source, device="cpu", backend="torch", detector="none")
        assert p.info.model_name == "apvit_tiny" and p.info.alignment == "5-point"
        _assert_same(p.predict_faces(crops), expected)


def _save_plain(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_plain_state_dict_needs_the_model_name(tmp_path):
    """No metadata: the paper-size config is built from the name; the class count comes from head.weight."""
    model = fastfer.models.create_model("apvit_tiny", num_classes=8).eval()
    path = _save_plain(model, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="pass model_name"):
        Predictor(path, device="cpu")
    p = Predictor(path, device="cpu", model_name="apvit_tiny", backend="torch", detector="none")
    assert p.label_names == model.label_names and len(p.label_names) == 8


def test_checkpoint_of_another_model_or_class_count(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(path, model.state_dict(), _checkpoint_meta(model))
    with pytest.raises(ValueError, match="holds a 'apvit_tiny' model, not 'apvit'"):
        Predictor(path, device="cpu", model_name="apvit")
    with pytest.raises(ValueError, match="has 7 classes, not num_classes=8"):
        Predictor(path, device="cpu", num_classes=8)
    plain = _save_plain(fastfer.models.create_model("apvit_tiny", num_classes=8), tmp_path / "eight.safetensors")
    with pytest.raises(ValueError, match="has 8 classes, not num_classes=7"):
        Predictor(plain, device="cpu", model_name="apvit_tiny", num_classes=7)
    other = _save_plain(model, tmp_path / "micro.safetensors")  # micro weights, default apvit_tiny config
    with pytest.raises(ValueError, match=r"does not fit the model:\n  blocks.0.attn.proj.bias: checkpoint \[32\], "
                                         r"model \[128\]"):
        Predictor(other, device="cpu", model_name="apvit_tiny")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        Predictor(tmp_path / "nothing.safetensors", device="cpu")
    with pytest.raises(TypeError, match="nn.Module or a checkpoint path"):
        Predictor(42, device="cpu")


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_bad_images_are_reported_per_item_and_the_rest_is_classified(predictor, astronaut, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    items = [astronaut, str(tmp_path / "missing.jpg"), broken, 3.5, np.full((8, 8, 3), 200.0), astronaut[:, ::-1]]
    with pytest.warns(RuntimeWarning, match="skipped an unreadable input"):
        results = predictor.predict(items)
    assert [len(r) for r in results] == [1, 0, 0, 0, 0, 1]
    assert [r.error is None for r in results] == [True, False, False, False, False, True]
    assert "missing.jpg: expected an image file, found nothing" in results[1].error
    assert "broken.jpg: cannot decode it" in results[2].error
    assert results[3].error == ("images[3]: expected a path, numpy array, PIL image or torch tensor, got float")
    assert "images[4]: expected float64 values in [0, 1], got min 200, max 200" in results[4].error
    assert results[0].name == "images[0]" and results[1].name.endswith("missing.jpg")
    _assert_same(results[0], predictor.predict(astronaut)[0])  # the good ones are unaffected
    _assert_same(results[5], predictor.predict(astronaut[:, ::-1].copy())[0])


def test_on_error_raise_keeps_what_was_computed(predictor, astronaut, tmp_path):
    items = [astronaut, astronaut, tmp_path / "missing.jpg", astronaut]
    with pytest.raises(FileNotFoundError, match="missing.jpg") as e:
        predictor.predict(items, on_error="raise")
    assert e.value.index == 2 and len(e.value.results) == 2 and all(len(r) == 1 for r in e.value.results)
    with pytest.raises(TypeError, match=r"images\[0\]: expected dtype uint8"):
        predictor.predict(np.zeros((8, 8, 3), np.int64), on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        predictor.predict([astronaut], on_error="ignore")


def test_value_range_for_0_255_floats(predictor, astronaut):
    as_float = astronaut.astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"images\[0\]"):
        (err,) = predictor.predict(as_float)
    assert err.error and "value_range=(0, 255)" in err.error
    _assert_same(predictor.predict(as_float, value_range=(0, 255))[0], predictor.predict(astronaut)[0])


def test_decoded_inputs_agree(predictor, astronaut, tmp_path):
    """A 16-bit PIL image, an EXIF-rotated file opened with PIL, and the same file as a path give one face each
    (the 16-bit image used to turn white; the PIL image used to stay sideways)."""
    from PIL import Image

    sixteen = Image.fromarray(astronaut[..., 1].astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: "rotate 90° counter-clockwise to display" → stored image is clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.rot90(astronaut, k=-1).copy()).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as opened:
        results = predictor.predict([sixteen, opened, path])
    assert [len(r) for r in results] == [1, 1, 1], [r.error for r in results]
    assert results[1][0]["box"] == pytest.approx(results[2][0]["box"], abs=2)


def test_features_are_the_pre_logits(predictor, model, astronaut):
    (faces,) = predictor.predict(astronaut, features=True, crops=True)
    feature = faces[0]["features"]
    assert feature.shape == (model.num_features,) and feature.dtype == np.float32
    x = predictor.normalize(torch.from_numpy(faces[0]["crop"]).permute(2, 0, 1)[None])
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)[0]
        logits = model.get_classifier()(expected)
    np.testing.assert_allclose(feature, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(faces[0]["logits"], logits.numpy(), atol=1e-5)
    crops = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    with_features = predictor.predict_faces(crops, features=True)
    assert np.stack([r["features"] for r in with_features]).shape == (3, model.num_features)
    _assert_same(with_features, predictor.predict_faces(crops))
    assert "features" not in predictor.predict(astronaut)[0][0]


def test_temperature_from_the_checkpoint_and_min_confidence(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(path, model.state_dict(), {**_checkpoint_meta(model), "calibration": {"temperature": 2.5}})
    crops = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    calibrated = Predictor(path, device="cpu", backend="torch", detector="none")
    assert calibrated.info.temperature == 2.5 and calibrated.temperature == 2.5
    plain = Predictor(model, device="cpu", backend="torch", detector="none")
    for c, p in zip(calibrated.predict_faces(crops), plain.predict_faces(crops)):
        np.testing.assert_allclose(c["logits"], p["logits"], atol=1e-5)  # logits stay raw
        expected = torch.tensor(p["logits"]).div(2.5).softmax(0).numpy()
        np.testing.assert_allclose(list(c["probs"].values()), expected, rtol=1e-5, atol=1e-7)
        assert c["confidence"] < p["confidence"]  # T > 1 softens
    override = Predictor(path, device="cpu", backend="torch", detector="none", temperature=1.0)
    _assert_same(override.predict_faces(crops), plain.predict_faces(crops))
    picky = Predictor(model, device="cpu", backend="torch", detector="none", min_confidence=0.999)
    results = picky.predict_faces(crops)
    assert all(r["label"] == "uncertain" for r in results if r["confidence"] < 0.999)
    assert all(list(r["probs"]) == list(picky.label_names) for r in results)  # every class still there
    save_weights(tmp_path / "bad.safetensors", model.state_dict(),
                 {**_checkpoint_meta(model), "calibration": {"temperature": -1}})
    with pytest.raises(ValueError, match="calibration.temperature: expected a positive finite number, got -1"):
        Predictor(tmp_path / "bad.safetensors", device="cpu")


def test_own_label_checkpoint_predicts_its_names(tmp_path):
    """A 3-class model (e.g. fine-tuned on folders engaged / bored / confused): the names come from the
    checkpoint metadata."""
    names = ["bored", "confused", "engaged"]
    model = tiny_model(num_classes=3, label_names=names)
    path = tmp_path / "own.safetensors"
    meta = {**_checkpoint_meta(model), "num_classes": 3, "label_names": names}
    save_weights(path, model.state_dict(), meta)
    p = Predictor(path, device="cpu", backend="torch", detector="none")
    assert p.label_names == tuple(names)
    (r,) = p.predict_faces(torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8))
    assert list(r["probs"]) == names and r["label"] in names


def test_bad_crops(predictor):
    with pytest.raises(TypeError, match="crops: expected a"):
        predictor.predict_faces("face.jpg")
    with pytest.raises(TypeError, match=r"crops: expected a \(B, 3, H, W\)"):
        predictor.predict_faces(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x: expected normalised faces"):
        predictor.predict_faces(torch.zeros(2, 3, 8, 8), normalized=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(amp="fp8"), "amp"),
    (dict(cuda_graphs=True, device="cpu"), "cuda_graphs"),
    (dict(no_face="ignore"), "no_face"),
    (dict(multi_face="first"), "multi_face"),
    (dict(detector="yolo"), "detector"),
    (dict(temperature=0), "temperature"),
    (dict(min_confidence=1.5), "min_confidence"),
])
def test_bad_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Predictor(model, **{"device": "cpu", **kwargs})


def test_bf16_autocast_on_cpu_is_close(model):
    crops = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    fp32 = Predictor(model, device="cpu", detector="none").predict_faces(crops)
    bf16 = Predictor(model, device="cpu", detector="none", amp="bf16").predict_faces(crops)
    np.testing.assert_allclose([r["logits"] for r in bf16], [r["logits"] for r in fp32], atol=0.5)


# --- CUDA -------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("options", [{}, {"cuda_graphs": True}, {"compile": True}])
def test_cuda_matches_cpu(options):
    model = tiny_model()
    crops = torch.randint(0, 256, (5, 3, 112, 112), dtype=torch.uint8)
    cpu = Predictor(model, device="cpu", backend="torch", detector="none").predict_faces(crops)
    cuda = Predictor(tiny_model(), device="cuda", detector="none", batch_size=4, **options)
    for _ in range(2):  # the second call replays the captured graph / compiled code
        got = cuda.predict_faces(crops.cuda())
        np.testing.assert_allclose([r["logits"] for r in got], [r["logits"] for r in cpu], atol=1e-3)


def test_non_finite_logits_mark_the_face_error_never_a_label():
    """NaN weights: every face comes back as an error entry (no label, no probabilities) instead of 'neutral'."""
    model = fastfer.models.create_model("apvit_tiny", **MICRO).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    p = Predictor(model, device="cpu", detector="none")
    out = p.predict_faces(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert [r["label"] for r in out] == ["error", "error"]
    assert all(r["confidence"] is None and set(r["probs"].values()) == {None} for r in out)
    assert "not finite" in out[0]["error"]
