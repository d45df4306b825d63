"""Exact resume: a run killed with SIGKILL at a random step and resumed ends with the same weights, bit for bit
(fp32, deterministic), as the same run left alone — even with a different number of loader workers."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastfer.cli import main
from fastfer.train.checkpoint import load_weights, read_latest
from tests.train.helpers import REPO, env, tiny_args

EPOCHS, STEPS_PER_EPOCH = 3, 4  # 64 images / batch 16
EXTRA = ["--deterministic", "--save-every-steps", "1", "--amp", "off", "--set", "overlay_images=0"]


@pytest.fixture
def restore_torch_globals():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def _latest_step(run) -> int:
    name = read_latest(run / "checkpoints")
    return int(re.search(r"step-(\d+)", name).group(1)) if name else -1


def test_sigkill_then_resume_is_bit_identical(tmp_path, restore_torch_globals):
    total = EPOCHS * STEPS_PER_EPOCH
    kill_after = random.SystemRandom().randint(1, total - 2)  # a random step, never the last
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"

    proc = subprocess.Popen([sys.executable, "-m", "fastfer",
                             *tiny_args(run, EPOCHS, extra=EXTRA + ["--workers", "1"])],
                            cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # the uninterrupted reference runs meanwhile, in this process, with no loader worker
    assert main(tiny_args(ref, EPOCHS, extra=EXTRA)) == 0
    deadline = time.monotonic() + 90
    while _latest_step(run) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (step {kill_after}): {err[-2000:]}"
    killed_at = _latest_step(run)
    assert 1 <= killed_at < total, f"killed after step {killed_at}, expected a step inside the run"
    assert not (run / "model.safetensors").exists()

    assert main(["train", "--resume", str(run), "--threads", "1", "--workers", "0", "--no-progress"]) == 0
    a, _ = load_weights(ref / "model.safetensors")
    b, meta = load_weights(run / "model.safetensors")
    assert meta["step"] == total and a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"killed after step {killed_at} of {total}, resumed: {len(differ)} tensors differ: {differ[:5]}"
    # the metrics history was continued, not restarted, and the interrupted epoch's numbers are whole
    hist = json.loads((run / "metrics.json").read_text())
    ref_hist = json.loads((ref / "metrics.json").read_text())
    assert [r["epoch"] for r in hist] == list(range(1, EPOCHS + 1))
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "step")
    assert [{k: r[k] for k in keys} for r in hist] == [{k: r[k] for k in keys} for r in ref_hist]
