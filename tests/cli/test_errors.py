"""Bad and hostile input at the command line: every case ends in one line (what, where, expected, actual) and a
distinct exit status, never a traceback, and nothing already written changes."""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastfer.cli import main
from tests.train.helpers import REPO, TINY_MODEL, env, tiny_args


def _digest(folder: Path) -> dict:
    """{relative path: sha256} of every file under folder (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys, code: int, pattern: str, status: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("fastfer ")]
    assert code == status, err
    assert "Traceback" not in err, err
    assert lines and re.search(pattern, lines[-1]), err
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-errors") / "run"
    assert main(tiny_args(run, 1)) == 0
    return run


# --- runs never overwrite or collide ---------------------------------------------------------------------------

def test_out_existing_run_without_resume_is_refused_and_untouched(trained, capsys):
    before = _digest(trained)
    code = main(tiny_args(trained, 1))
    _one_line(capsys, code, r"--out .*run: holds a training run \(.*config.json.*\); pass --resume .* to continue it")
    assert _digest(trained) == before


def test_out_non_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(tiny_args(tmp_path, 1))
    _one_line(capsys, code, r"the folder is not empty \(notes.txt\)")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_runs_started_together_get_different_folders(tmp_path):
    """Two processes asking for runs/<timestamp> in the same second: os.mkdir is atomic, each gets its own."""
    code = ("import sys, time; from fastfer.train.runtime import create_run_dir\n"
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); print(create_run_dir())")
    start = f"{__import__('time').time() + 3:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", code, start], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    folders = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(folders)) == 2, folders
    assert all((tmp_path / f).is_dir() for f in folders)


# --- numerical guards and reproducible evaluation -------------------------------------------------------------------

def _nan_copy(trained: Path, tmp_path: Path) -> Path:
    from fastfer.models.weights import read_metadata, read_state_dict, save_weights

    src = trained / "model.safetensors"
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in read_state_dict(src).items()}
    return Path(save_weights(tmp_path / "nan.safetensors", state, read_metadata(src)))


def test_nan_weights_are_refused_by_eval_predict_and_export(trained, tmp_path, capsys):
    bad = _nan_copy(trained, tmp_path)
    code = main(["eval", "--checkpoint", str(bad), "--threads", "1", "--workers", "0", "--out", str(tmp_path / "e")])
    _one_line(capsys, code, r"nan.safetensors'?: \d+ tensor\(s\) hold NaN or inf: .*weight")
    assert not (tmp_path / "e").exists()
    image = tmp_path / "face.png"
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    code = main(["predict", str(image), "--checkpoint", str(bad), "--detector", "none"])
    _one_line(capsys, code, r"hold NaN or inf")
    code = main(["export", "--checkpoint", str(bad), "--format", "torch-export", "--out", str(tmp_path / "m.pt2")])
    _one_line(capsys, code, r"hold NaN or inf")
    assert not (tmp_path / "m.pt2").exists()


def test_eval_of_a_run_without_data_reproduces_its_own_test_number(trained, tmp_path, capsys):
    own = json.loads((trained / "test_report.json").read_text())
    assert main(["eval", "--checkpoint", str(trained), "--threads", "1", "--workers", "0",
                 "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "test_report.json").read_text())
    assert again["n"] == own["n"] and again["accuracy"] == own["accuracy"]
    assert again["confusion_matrix"] == own["confusion_matrix"]


# --- configuration ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, pattern", [
    (["--set", "model_kwargs.bogus=1"], r"model.kwargs: apvit_tiny takes no argument\(s\) bogus; it takes"),
    (["--set", "data_kwargs.bogus=1"], r"data_kwargs: the synthetic set takes .*; got unknown bogus"),
    (["--set", "seed=abc"], r"runtime.seed: expected an int ≥ 0, got 'abc'"),
    (["--set", "momentum=nan"], r"optim.momentum: expected a finite number in \[0, 1\), got nan"),
    (["--set", "label_smoothing=5"], r"loss.label_smoothing: expected a finite number in \[0, 1\), got 5"),
    (["--model", "resnet50"], r"model: expected a fastfer model \(apvit, apvit_tiny, .*\), got 'resnet50'"),
    (["--max-steps-per-epoch", "-3"], r"schedule.max_steps_per_epoch: expected an int ≥ 1 or null"),
    (["--max-steps-per-epoch", "0"], r"schedule.max_steps_per_epoch: expected an int ≥ 1 or null .*got 0"),
    (["--save-every-steps", "-1"], r"runtime.save_every_steps: expected an int ≥ 1 or null .*got -1"),
    (["--set", "min_lr=1", "--lr", "0.01"], r"schedule.min_lr: expected ≤ optim.lr \(0.01\), got 1"),
    (["--set", "warmup_epochs=-1"], r"schedule.warmup_epochs: expected a finite number ≥ 0, got -1"),
    (["--set", "model_kwargs.depth=2", "--set", "model_kwargs.depth.x=1"], r"--set .*cannot descend"),
    (["--set", "model_kwargs.head_init_std=-1"], r"head_init_std: expected a number >= 0, got -1"),
])
def test_bad_configuration_is_one_line(tmp_path, capsys, extra, pattern):
    code = main(tiny_args(tmp_path / "r", 1, extra=extra))
    _one_line(capsys, code, pattern)
    assert not (tmp_path / "r").exists()


def test_corrupt_config_json_on_resume_names_the_file(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "config.json").write_text("{not json")
    code = main(["train", "--resume", str(run), "--threads", "1", "--workers", "0", "--no-progress"])
    _one_line(capsys, code, r"resume: .*copy/config.json is not valid JSON")


def test_resume_with_a_truncated_latest_checkpoint_uses_the_intact_older_one(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(tiny_args(run, 2, extra=["--set", "keep_checkpoints=3"])) == 0
    root = run / "checkpoints"
    latest = (root / "latest").read_text().strip()
    state = root / latest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])  # truncated
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--threads", "1", "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"warning: the latest checkpoint is unusable ({root / latest / 'state.pt'}: cannot read" in out
    assert "resuming from the newest intact one" in out
    (root / "latest").write_text("ckpt-999999-step-00000001\n")  # dangling
    for ckpt in root.glob("ckpt-*"):
        (ckpt / "state.pt").write_bytes(b"")
    code = main(["train", "--resume", str(run), "--threads", "1", "--workers", "0", "--no-progress"])
    _one_line(capsys, code, r"resume: .*names ckpt-999999.*no intact older checkpoint")


# --- files ---------------------------------------------------------------------------------------------------------

def test_text_or_pickled_pth_is_one_line_for_predict_and_export(tmp_path, capsys):
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint\n")
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    for path in (text, pickled):
        code = main(["export", "--checkpoint", str(path), "--model", "apvit_tiny", "--format", "torch-export",
                     "--out", str(tmp_path / "x.pt2")])
        _one_line(capsys, code, rf"{path.name}'?: cannot be read")
        code = main(["predict", str(tmp_path), "--checkpoint", str(path), "--model", "apvit_tiny"])
        _one_line(capsys, code, rf"{path.name}'?: cannot be read")


def test_export_on_a_full_disk_keeps_the_existing_file(trained, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "model.pt2"
    out.write_bytes(b"the previous export")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file: "
                           "unexpected pos 8821760 vs 8821712")

    monkeypatch.setattr(torch.export, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    code = main(["export", "--checkpoint", str(trained), "--format", "torch-export", "--out", str(out)])
    _one_line(capsys, code, r"no space left on the device writing .*model.pt2 \(any existing file there is unchanged\)")
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no temporary file left


def test_checkpoint_on_a_full_disk_says_so(tmp_path, monkeypatch):
    import errno
    import shutil

    from fastfer.train import checkpoint as ckpt

    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("enforce fail … unexpected pos")))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(tmp_path / "c", 1, {"w": torch.zeros(2)}, {}, {})
    assert info.value.errno == errno.ENOSPC and "no space left on the device writing" in str(info.value)


def test_writing_below_a_file_is_one_line(trained, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    src = tmp_path / "vit.pth"
    torch.save({"pos_embed": torch.zeros(1)}, src)
    code = main(["convert", "--from", "vit-small-v01", str(src), str(blocker / "out.safetensors")])
    _one_line(capsys, code, r"(vit-small-v01|a_file)")
    code = main(["export", "--checkpoint", str(trained), "--format", "torch-export",
                 "--out", str(blocker / "m.pt2")])
    _one_line(capsys, code, r"a_file")


# --- data ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, pattern", [
    (lambda root: root, r"folder:.*expected train/ .*sub-folders"),  # empty folder
    (lambda root: root / "missing", r"expected train/"),
])
def test_dataset_folders_missing_or_empty(tmp_path, capsys, make, pattern):
    root = make(tmp_path / "ds")
    (tmp_path / "ds").mkdir()
    code = main(tiny_args(tmp_path / "r", 1, extra=["--data", f"folder:{root}", "--set", "data_kwargs={}"]))
    _one_line(capsys, code, pattern)


def test_unreadable_list_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    lst = tmp_path / "train.lst"
    lst.write_text("a.png happy 1\n")
    real = Path.read_bytes

    def denied(self):
        if self == lst:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    code = main(tiny_args(tmp_path / "r", 1, extra=["--data", f"list:{lst}", "--set", f"data_kwargs={{'test_list': '{lst}'}}"]))
    _one_line(capsys, code, r"permission denied: '.*train.lst'")


@pytest.mark.parametrize("content, pattern", [
    ("a.png happy 1\nb\xe9.png sad 2\n".encode("latin-1"), r"train.lst, line 2: byte 0xe9 at column 2 is not UTF-8"),
    ("a.png happy ²\n".encode(), r"train.lst, line 1: expected a label id ≥ 0, got '²' \(column 3\)"),
])
def test_list_files_with_bad_bytes_or_numbers(tmp_path, capsys, content, pattern):
    lst = tmp_path / "train.lst"
    lst.write_bytes(content)
    code = main(tiny_args(tmp_path / "r", 1, extra=["--data", f"list:{lst}", "--set", f"data_kwargs={{'test_list': '{lst}'}}"]))
    _one_line(capsys, code, pattern)


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastfer", "--debug", "train", "--model", "resnet50", "--out",
                           str(tmp_path / "r"), *TINY_MODEL[:0]], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_predict_results_replace_the_old_file_only_when_complete(trained, tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    from fastfer.infer import files

    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "results.jsonl"
    out.write_text("the previous results\n")
    real = files.process_image_batch
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run midway
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "process_image_batch", fail_on_second)
    code = main(["predict", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png"),
                 "--checkpoint", str(trained), "--detector", "none", "--batch-size", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "results so far are in" in err
    assert out.read_text() == "the previous results\n"  # untouched
    partial = tmp_path / "results.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 1  # the first image's record was kept
    monkeypatch.setattr(files, "process_image_batch", real)
    assert main(["predict", str(tmp_path / "0.png"), "--checkpoint", str(trained), "--detector", "none",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[0])["path"].endswith("0.png")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
