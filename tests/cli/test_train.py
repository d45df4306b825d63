"""``fastfer train`` / ``fastfer eval`` smoke runs with tiny settings, the RAF-DB path, and the error paths."""
import json
import runpy
import sys

import pytest

from fastfer.cli import main
from fastfer.train.checkpoint import read_metadata
from tests.train.helpers import tiny_args


def test_train_then_eval_from_the_checkpoint_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, 1)) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "test split:" in out and "img/s" in out
    for name in ("model.safetensors", "metrics.csv", "metrics.json", "config.json", "summary.json",
                 "test_report.json", "test_confusion_matrix.png", "app_overlay.png"):
        assert (run / name).is_file(), name
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("stage,epoch,global_epoch,step,lr")
    meta = read_metadata(run / "model.safetensors")
    assert meta["model"] == "apvit_tiny" and meta["preprocessing"]["input_size"] == [3, 32, 32]
    assert meta["preprocessing"]["alignment"].startswith("none: synthetic")
    summary = json.loads((run / "summary.json").read_text())

    ev = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--set", "data_kwargs.test_size=24", "--out", str(ev),
                 "--threads", "1", "--workers", "0", "--backend", "torch"]) == 0
    report = json.loads((ev / "test_report.json").read_text())
    assert report["n"] == 24 and report["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert (ev / "test_confusion_matrix.png").is_file()
    assert "accuracy" in capsys.readouterr().out


def _write_rafdb(root, per_class=4, test_per_class=2):
    """Tiny RAF-DB 'basic' layout: EmoLabel/list_patition_label.txt and Image/aligned/<stem>_aligned.jpg."""
    import cv2

    from fastfer.data.synthetic import synthetic_image

    rafdb_names = ["surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"]  # labels 1..7
    canon = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    lines = []
    (root / "basic/Image/aligned").mkdir(parents=True)
    (root / "basic/EmoLabel").mkdir(parents=True)
    for split, n in (("train", per_class), ("test", test_per_class)):
        k = 0
        for _ in range(n):
            for label, name in enumerate(rafdb_names, 1):
                k += 1
                stem = f"{split}_{k:05d}"
                img = synthetic_image(0, "train" if split == "train" else "test", k, canon.index(name), 100)
                cv2.imwrite(str(root / f"basic/Image/aligned/{stem}_aligned.jpg"), img[..., ::-1])
                lines.append(f"{stem}.jpg {label}")
    (root / "basic/EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")


def test_train_on_rafdb_layout(tmp_path, capsys):
    _write_rafdb(tmp_path / "RAF-DB")
    run = tmp_path / "raf"
    args = tiny_args(run, 1, extra=["--data", f"rafdb:{tmp_path / 'RAF-DB'}", "--batch-size", "8",
                                    "--set", "val_fraction=0.25", "--set", "data_kwargs={}"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "25% of train held out" in out and "test 14 (test split)" in out
    meta = read_metadata(run / "model.safetensors")
    assert meta["data"].startswith("rafdb:") and "RAF-DB stock aligned" in meta["preprocessing"]["alignment"]
    report = json.loads((run / "test_report.json").read_text())
    assert report["n"] == 14 and report["label_names"][0] == "neutral"


def test_train_on_ferformer_list_files(tmp_path, capsys):
    """FER-former's ``path  text_label  int_label`` lists over the same tiny RAF-DB images."""
    _write_rafdb(tmp_path / "RAF-DB")
    basic = tmp_path / "RAF-DB" / "basic"
    order = ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]  # FER-former's ids 0..6
    for split in ("train", "test"):
        lines = []
        for row in (basic / "EmoLabel/list_patition_label.txt").read_text().split("\n"):
            if row.startswith(split):
                name, label = row.split()
                text = order[int(label) - 1]
                lines.append(f"Image/aligned/{name[:-4]}_aligned.jpg  {text}  {int(label) - 1}")
        (basic / f"{split}.lst").write_text("\n".join(lines) + "\n")
    run = tmp_path / "lst"
    args = tiny_args(run, 1, extra=["--data", f"list:{basic / 'train.lst'}", "--batch-size", "8",
                                    "--set", f"data_kwargs={{'test_list': '{basic / 'test.lst'}'}}"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "of the train list held out" in out and "test 14 (test list)" in out
    report = json.loads((run / "test_report.json").read_text())
    assert report["n"] == 14 and report["label_names"] == ["neutral", "happy", "sad", "surprise", "fear",
                                                           "disgust", "anger"]
    ev = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--data", f"list:{basic / 'test.lst'}", "--out", str(ev),
                 "--threads", "1", "--workers", "0", "--backend", "torch"]) == 0
    again = json.loads((ev / "test_report.json").read_text())
    assert again["n"] == 14 and again["accuracy"] == pytest.approx(report["accuracy"])
    code = main(tiny_args(tmp_path / "r2", 1, extra=["--data", f"list:{basic / 'train.lst'}", "--set", "data_kwargs={}"]))
    _one_line_error(capsys, code, "also name the test list with --set data_kwargs.test_list=PATH")


def test_print_config_shows_the_apvit_recipe(capsys):
    assert main(["train", "--model", "apvit", "--print-config", "--epochs", "3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    o, s, d = cfg["optim"], cfg["schedule"], cfg["data"]
    assert (cfg["recipe"], o["name"], o["lr"], o["momentum"], o["weight_decay"]) == ("apvit", "sgd", 1e-3, 0.9, 5e-4)
    assert (s["name"], s["by"], o["grad_clip"], s["batch_size"], s["epochs"]) == ("cosine", "epoch", 10.0, 128, 3)
    assert (d["sampler"], d["oversample_thr"], d["oversample_method"]) == ("class_balanced", 0.15, "sqrt")


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "imagenet:/x", "--print-config"], "data: expected 'synthetic' or NAME:PATH"),
    (["train", "--set", "learning_rate=1", "--print-config"], "unknown key 'learning_rate'; valid keys:"),
    (["train", "--recipe", "resnet", "--print-config"], "recipe: expected one of"),
    (["train", "--set", "optimizer=lion", "--print-config"], "optim.name: expected one of sgd, adam, adamw"),
    (["train", "--resume"], "--resume needs a run folder"),
])
def test_cli_errors_name_the_argument(argv, message, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def _one_line_error(capsys, code, pattern):
    """The CLI's error path: exit status 2, one line on stderr matching ``pattern``, no traceback."""
    import re

    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_data_errors_name_the_path(tmp_path, capsys):
    code = main(tiny_args(tmp_path / "r", 1, extra=["--data", f"rafdb:{tmp_path / 'nowhere'}", "--set", "data_kwargs={}"]))
    _one_line_error(capsys, code, "RAF-DB root")
    code = main(tiny_args(tmp_path / "r", 1, extra=["--data", f"rafdb:{tmp_path / 'nowhere'}"]))
    _one_line_error(capsys, code, "data_kwargs: the rafdb reader takes .*images.*; got unknown test_size, train_size")
    code = main(["eval", "--checkpoint", str(tmp_path / "missing"), "--data", "synthetic"])
    _one_line_error(capsys, code, "checkpoint: no such file or folder")


def test_python_dash_m_fastfer_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fastfer", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("fastfer", run_name="__main__")
    assert exc.value.code == 0 and "info" in capsys.readouterr().out
