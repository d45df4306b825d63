"""amp ``auto`` (fastfer/utils/precision.py): bf16 only where the CPU computes it natively, fp32 elsewhere, the
choice said in one line; and the accuracy guard — a trained model predicts the same class in bf16 autocast as in
fp32 for ≥ 99 % of the synthetic test split."""
from pathlib import Path

import pytest
import torch

from fastfer.utils import precision


@pytest.fixture
def features(monkeypatch):
    def set_features(*names):
        monkeypatch.setattr(precision, "cpu_features", lambda: frozenset(names))

    return set_features


@pytest.mark.parametrize("flags, expected", [((), None), (("avx512_bf16",), torch.bfloat16),
                                             (("amx_bf16", "avx512_bf16"), torch.bfloat16),
                                             (("avx512_fp16",), None)])
def test_auto_on_cpu_follows_native_bf16(features, flags, expected):
    features(*flags)
    assert precision.resolve_amp("auto", "cpu") is expected
    line = precision.describe_amp("auto", "cpu")
    assert line.startswith("precision: " + ("bf16 autocast" if expected else "fp32"))
    assert ("has native bf16" in line) == (expected is not None)


def test_explicit_modes_and_errors(features):
    features()
    assert precision.resolve_amp("bf16", "cpu") is torch.bfloat16  # asked for: honoured (emulated, slower)
    assert precision.resolve_amp("fp16", "cpu") is torch.float16
    for off in (None, "off", "fp32"):
        assert precision.resolve_amp(off, "cpu") is None
    assert precision.describe_amp("off", "cpu") == "precision: fp32 (amp off)"
    with pytest.raises(ValueError, match=r"amp: expected one of \('auto', 'bf16', 'fp16', 'off'\), got 'int8'"):
        precision.resolve_amp("int8", "cpu")


def test_cpu_features_reads_this_machine():
    found = precision.cpu_features()
    assert found <= {"amx_bf16", "avx512_bf16", "avx512_fp16"}
    assert precision.cpu_native_bf16() == bool(found & {"amx_bf16", "avx512_bf16"})


def test_train_and_predictor_use_auto(features):
    import timm

    import fastfer  # noqa: F401  (registers the models)
    from fastfer.infer import Predictor
    from fastfer.train.runtime import amp_dtype

    features("amx_bf16")
    assert amp_dtype("auto", torch.device("cpu")) is torch.bfloat16
    model = timm.create_model("apvit_tiny", num_classes=7)
    p = Predictor(model, device="cpu", detector="none")
    assert p.amp is torch.bfloat16 and p.precision.startswith("precision: bf16 autocast (amp auto")
    assert p.channels_last and set(p.op_backends) == {"patch_pool", "token_pool_attention"}
    features()
    assert amp_dtype("auto", torch.device("cpu")) is None
    p = Predictor(model, device="cpu", detector="none", channels_last=False)
    assert p.amp is None and p.precision.startswith("precision: fp32 (amp auto: this CPU has no native bf16")
    assert not p.channels_last


#: apvit_tiny trained by the main job (``fastfer train --out RUN``, 16 epochs, the recipe of 2026-12-02 with the
#: zero-initialised head; 97.1 % on the synthetic test
#: split), RUN/model.safetensors with its metadata. Trained weights make the guard mean something (an
#: untrained model's logits are nearly tied), and training one inside the test would cost minutes.
TRAINED = Path(__file__).resolve().parents[1] / "fixtures" / "apvit_tiny_synthetic.safetensors"


@pytest.fixture(scope="module")
def trained_run():
    assert TRAINED.is_file(), f"{TRAINED} is missing"
    return TRAINED


def test_bf16_predicts_the_same_class_as_fp32(trained_run):
    """The guard behind amp auto: on the 1,400-image synthetic test split, bf16 autocast and fp32 agree on the
    predicted class for ≥ 99 % of images (on a CPU without native bf16 this runs emulated: same numbers)."""
    from fastfer.models.weights import load_model
    from fastfer.train.data import Augmented, build_eval_split, eval_loader, make_transforms
    from fastfer.train.evaluate import predict_loader

    model, meta = load_model(trained_run)
    pre = meta["preprocessing"]
    size = int(pre["input_size"][-1])
    dataset, _ = build_eval_split("synthetic", "test", dict(meta["data_kwargs"]), size, 0,
                                  num_classes=meta["num_classes"])
    assert len(dataset) == 1400
    tf = make_transforms(pre["test_transform"], size, pre["mean"], pre["std"], train=False)
    loader = eval_loader(Augmented(dataset, tf), 100, 0)
    cpu = torch.device("cpu")
    fp32 = predict_loader(model, loader, cpu, None)
    bf16 = predict_loader(model, loader, cpu, torch.bfloat16)
    accuracy = (fp32["logits"].argmax(1) == fp32["targets"]).float().mean().item()
    assert accuracy > 0.5, f"the model did not learn (accuracy {accuracy:.1%}): the guard would mean nothing"
    agree = (fp32["logits"].argmax(1) == bf16["logits"].argmax(1)).float().mean().item()
    assert agree >= 0.99, f"bf16 and fp32 agree on {agree:.2%} of the test split"
