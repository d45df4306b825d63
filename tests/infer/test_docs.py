"""docs/inference.md runs as written: its Python blocks in order (one namespace) and its ``fastfer`` command lines,
in a folder with a checkpoint (``run/``), photos, a video and a class-folder set. Lines marked "needs a camera" /
"needs that camera" are left out (no camera or network here)."""
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import fastfer.models
from fastfer.train.checkpoint import save_weights

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

DOC = Path(__file__).resolve().parents[2] / "docs" / "inference.md"
MICRO = dict(ir_widths=(8, 8), embed_dim=32, depth=2, num_heads=2, keep_rates=(1.0, 0.9), patch_keep=64)


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = fastfer.models.create_model("apvit_tiny", **MICRO)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    cfg = model.pretrained_cfg
    save_weights(tmp_path / "run" / "model.safetensors", model.state_dict(), dict(
        model="apvit_tiny", model_kwargs=MICRO, num_classes=7, label_names=list(model.label_names),
        preprocessing=dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"])),
        calibration={"temperature": 1.7}))
    face = cv2.cvtColor(skimage_data.astronaut()[:256, 64:320], cv2.COLOR_RGB2BGR)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "portrait.jpg"), face)
    cv2.imwrite(str(photos / "group.png"), np.hstack([face, face[:, ::-1]]))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    video = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for i in range(8):
        video.write(np.ascontiguousarray(np.roll(face, 2 * i, axis=1)))
    video.release()
    for i, name in enumerate(["engaged", "bored", "confused"]):
        for split in ("train", "test"):
            target = tmp_path / "my_faces" / split / name / f"{i}.png"
            target.parent.mkdir(parents=True)
            cv2.imwrite(str(target), np.roll(face, 40 * i, axis=0))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.filterwarnings("ignore:skipped an unreadable input:RuntimeWarning")
def test_python_blocks_run_in_order(workdir, capsys):
    namespace: dict = {}
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name} python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "skipped: photos/broken.jpg" in out
    assert "person 0: mostly" in out and "(384,)" not in out  # micro model: 32-d features
    assert "(32,) float32" in out and "1.7" in out
    assert "('bored', 'confused', 'engaged')" in out


def test_command_lines_run(workdir, capsys):
    from fastfer.cli import main

    lines = [line for block in _blocks("bash") for line in block.splitlines()
             if line.startswith("fastfer ") and "# needs" not in line]
    assert len(lines) >= 2
    for line in lines:
        command, _, comment = line.partition("  #")
        status = re.search(r"exit status (\d)", comment)
        argv = shlex.split(command)[1:] + ["--backend", "torch"]
        assert main(argv) == (int(status.group(1)) if status else 0), line
    assert (workdir / "out" / "clip.mp4").stat().st_size > 0 and (workdir / "out" / "tracks.json").is_file()
    assert os.path.getsize(workdir / "out" / "photos.jsonl") > 0
