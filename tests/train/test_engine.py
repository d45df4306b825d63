"""Engine behaviour on tiny runs: NaN stop keeping the last good checkpoint, gradient accumulation, EMA,
the two-stage Conv-cut recipe and FER-former's two-head loss."""
import json
import re

import pytest
import torch

from fastfer.cli import main
from fastfer.train.checkpoint import load_checkpoint, load_weights, read_latest, resolve_checkpoint_dir
from tests.train.helpers import tiny_args


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    blow_up = ["--optimizer", "sgd", "--lr", "1e8", "--set", "grad_clip=None", "--set", "warmup_epochs=0",
               "--save-every-steps", "1", "--set", "overlay_images=0"]
    assert main(tiny_args(run, 2, extra=blow_up)) == 3
    err = capsys.readouterr().err
    # either the loss itself ("loss is nan at optimizer step N") or the weights after an update ("weights became
    # non-finite (...) by optimizer step N") trip first, depending on where the overflow lands
    found = re.search(r"(?:at|by) optimizer step (\d+)", err)
    assert found and "training stopped" in err
    step = int(found.group(1))
    latest = read_latest(run / "checkpoints")
    assert latest is not None and latest in err  # the message names the last good checkpoint
    weights, meta, state = load_checkpoint(resolve_checkpoint_dir(run))
    assert meta["step"] < step
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (run / "model.safetensors").exists()


def test_gradient_accumulation_and_ema(tmp_path):
    run = tmp_path / "acc"
    assert main(tiny_args(run, 1, extra=["--batch-size", "8", "--accum-steps", "2", "--ema", "0.5",
                                         "--set", "overlay_images=0"])) == 0
    hist = json.loads((run / "metrics.json").read_text())
    assert hist[0]["step"] == 64 // (8 * 2)  # optimizer steps, not micro-batches
    _, _, state = load_checkpoint(resolve_checkpoint_dir(run))
    final, meta = load_weights(run / "model.safetensors")
    # the EMA weights are what the run keeps
    assert all(torch.equal(final[k], v) for k, v in state["ema"].items())
    assert meta["model"] == "apvit_tiny" and meta["num_classes"] == 7


def test_conv_cut_two_stages_carry_the_head_and_apply_stage_updates(tmp_path):
    run = tmp_path / "cc"
    args = ["train", "--model", "conv_cut_tiny", "--recipe", "conv_cut", "--out", str(run), "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--workers", "0", "--no-progress", "--backend", "torch",
            "--set", "input_size=96", "--set", "data_kwargs={'train_size': 32, 'val_size': 8, 'test_size': 8}"]
    assert main(args) == 0
    hist = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in hist] == ["train-head", "finetune-backbone"]
    assert hist[0]["lr"] == pytest.approx(1e-3) and hist[1]["lr"] == pytest.approx(1e-5 / (1 + 1 / 80))
    final, _ = load_weights(run / "model.safetensors")
    assert not any(k.startswith("layernorm.") for k in final)  # stage 2 drops the DET LayerNorm
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["stages"][0]["loss"] == "ce_balanced" and cfg["overrides"]["schedule"]["epochs"] == 1


def test_fer_former_trains_both_heads(tmp_path):
    from fastfer.labels import EXPRESSIONS
    from fastfer.models.text_encoder import save_text_embed

    text = tmp_path / "text.safetensors"
    save_text_embed(text, torch.randn(7, 512, generator=torch.Generator().manual_seed(0)), EXPRESSIONS[:7],
                    encoder="random (test)")
    run = tmp_path / "ff"
    args = ["train", "--model", "fer_former_tiny", "--out", str(run), "--epochs", "1", "--batch-size", "8",
            "--threads", "1", "--workers", "0", "--no-progress", "--backend", "torch", "--text-encoder", str(text),
            "--set", "data_kwargs={'train_size': 32, 'val_size': 8, 'test_size': 8}"]
    assert main(args) == 0
    row = json.loads((run / "metrics.json").read_text())[0]
    assert {"val_text_accuracy", "val_fused_accuracy"} <= set(row)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"] == "fer_former" and cfg["optim"]["name"] == "sgd" and cfg["optim"]["lr"] == 1e-4
    final, _ = load_weights(run / "model.safetensors")
    assert "text_embed" in final  # eval/predict need no text encoder
    report = json.loads((run / "test_report.json").read_text())
    assert "text_accuracy" in report and report["n"] == 8


def test_fer_former_without_text_features_is_a_clear_error(tmp_path, capsys):
    args = ["train", "--model", "fer_former_tiny", "--out", str(tmp_path / "x"), "--epochs", "1",
            "--set", "data_kwargs={'train_size': 16, 'val_size': 8, 'test_size': 8}", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()  # progress bars of the synthetic drawing come first
    last = err.splitlines()[-1]
    assert last.startswith("fastfer train: ") and "--text-encoder FILE" in last and "Traceback" not in err


def test_init_weights_and_the_training_only_trunk_head(tmp_path):
    from fastfer.models import create_model
    from fastfer.train.checkpoint import save_weights
    from tests.train.helpers import TINY_MODEL

    import ast
    kwargs = ast.literal_eval(TINY_MODEL[1].split("=", 1)[1])
    donor = create_model("apvit_tiny", num_classes=7, **kwargs)
    part = {k: v for k, v in donor.state_dict().items() if k.startswith("extractor.")}
    init = tmp_path / "trunk.safetensors"
    save_weights(init, part, {})
    run = tmp_path / "init"
    assert main(tiny_args(run, 0, extra=["--init", str(init), "--set", "overlay_images=0"])) == 0
    final, _ = load_weights(run / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in part.items())
    assert not any("aux" in k for k in final)  # the demo's trunk head is training-only
    run2 = tmp_path / "aux"
    assert main(tiny_args(run2, 1, extra=["--set", "overlay_images=0"])) == 0
    _, _, state = load_checkpoint(resolve_checkpoint_dir(run2))
    gh, gw = donor.grid_size  # the trunk head sees the whole flattened trunk map
    assert state["extras"]["aux_head"]["weight"].shape == (7, donor.extractor.out_channels * gh * gw)


def test_ferplus_soft_labels_train_and_evaluate_on_majority(tmp_path, capsys):
    """label_mode=probability: soft targets in training (class-weighted loss too), majority labels for val/test."""
    import cv2

    from fastfer.data.synthetic import synthetic_image

    votes = {0: [8, 2, 0, 0, 0, 0, 0, 0, 0, 0], 1: [0, 6, 4, 0, 0, 0, 0, 0, 0, 0],
             3: [0, 3, 7, 0, 0, 0, 0, 0, 0, 0]}  # canonical class → votes (neutral, happiness, surprise, …)
    for folder, n in (("FER2013Train", 8), ("FER2013Valid", 2), ("FER2013Test", 2)):
        (tmp_path / folder).mkdir()
        lines = []
        for k in range(n):
            for label, counts in votes.items():
                name = f"{folder}-{k}-{label}.png"
                img = synthetic_image(len(folder), "train", k, label, 48)
                cv2.imwrite(str(tmp_path / folder / name), img[..., ::-1])
                lines.append(f"{name}," + ",".join(map(str, counts)))
        (tmp_path / folder / "label.csv").write_text("\n".join(lines) + "\n")
    from fastfer.train.data import build_splits

    splits = build_splits(f"ferplus:{tmp_path}", {"label_mode": "probability", "num_classes": 7}, 0.1, "auto", 32, 0)
    assert splits.train[1][1].tolist() == pytest.approx([0, .6, 0, .4, 0, 0, 0])  # soft: happiness .6, surprise .4
    assert splits.val[1][1] == 1 and splits.test[2][1] == 3  # majority labels
    run = tmp_path / "run"
    args = tiny_args(run, 1, extra=["--data", f"ferplus:{tmp_path}", "--batch-size", "8", "--set", "overlay_images=0",
                                    "--set", "data_kwargs={'label_mode': 'probability', 'num_classes': 7}",
                                    "--set", "loss=ce_balanced"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train 24 (" in out and "test 6 (test split)" in out
    report = json.loads((run / "test_report.json").read_text())
    assert report["n"] == 6
    hist = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= hist[-1]["train_accuracy"] <= 1.0 and hist[-1]["train_loss"] > 0


def test_a_folder_too_small_for_validation_trains_without_it(tmp_path, capsys):
    """0 validation images: a clear note and training without per-epoch validation (never a KeyError); a recipe
    that needs val metrics is a one-line error instead."""
    from tests.data.fixtures import write_image

    root = tmp_path / "ds"
    for split, n in (("train", 1), ("test", 2)):  # one image per class: the 10 % hold-out takes none
        for cls in ("happy", "sad"):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", 10 * i + (100 if cls == "happy" else 0), (32, 32))
    run = tmp_path / "r"
    args = tiny_args(run, 1, extra=["--data", f"folder:{root}", "--set", "data_kwargs={}", "--batch-size", "2",
                                    "--set", "overlay_images=0"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the validation split is empty" in out and "no validation" in out
    hist = json.loads((run / "metrics.json").read_text())
    assert "val_accuracy" not in hist[0] and json.loads((run / "test_report.json").read_text())["n"] == 4
    code = main(tiny_args(tmp_path / "r2", 1, extra=["--data", f"folder:{root}", "--set", "data_kwargs={}",
                                                    "--batch-size", "2", "--set", "select_best=val_accuracy"]))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "the validation split is empty" in err and "select_best monitors val_accuracy" in err


def test_own_labels_in_the_given_order_and_calibration_in_the_checkpoint(tmp_path, capsys):
    """--labels c,a,b on a 3-class folder set: the classifier rows follow that order in training, the test report
    and the checkpoint; the temperature fitted on validation is stored and the report gives ECE before/after."""
    from fastfer.models.weights import read_metadata
    from tests.data.fixtures import write_image

    root = tmp_path / "ds"
    for split, n in (("train", 6), ("test", 2)):
        for k, cls in enumerate(("bored", "confused", "engaged")):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", 40 * k + i, (32, 32))
    run = tmp_path / "r"
    args = tiny_args(run, 1, extra=["--data", f"folder:{root}", "--set", "data_kwargs={}", "--batch-size", "4",
                                    "--labels", "engaged,bored,confused", "--set", "overlay_images=0"])
    assert main(args) == 0
    meta = read_metadata(run / "model.safetensors")
    assert meta["label_names"] == ["engaged", "bored", "confused"] and meta["num_classes"] == 3
    cal = meta["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and cal["split"] == "val"
    report = json.loads((run / "test_report.json").read_text())
    assert list(report["per_class"]) == ["engaged", "bored", "confused"]
    assert {"test_ece_before", "test_ece_after", "ece_before", "ece_after"} <= set(report["calibration"])
    assert "calibration: temperature" in capsys.readouterr().out
