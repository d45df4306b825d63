"""DDP on CPU: ``torchrun --nproc_per_node 2`` with the gloo backend trains, gathers evaluation over both ranks
and writes the run folder once (rank 0)."""
import json
import subprocess
import sys

import torch

from fastfer.train import distributed as dist_utils
from tests.train.helpers import REPO, env, tiny_args


def test_two_gloo_processes_train_and_rank0_writes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastfer", *tiny_args(run, 1)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    hist = json.loads((run / "metrics.json").read_text())
    assert hist[0]["step"] == 64 // (16 * 2)  # each optimizer step consumed one batch per rank
    report = json.loads((run / "test_report.json").read_text())
    assert report["n"] == 24  # both ranks' shares gathered, no padding duplicates
    assert proc.stdout.count("run folder") == 1  # only rank 0 prints and writes
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert (run / "model.safetensors").is_file()


def test_single_process_helpers_are_no_ops(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = dist_utils.init("cpu")
    assert not info.enabled and info.is_main
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist_utils.all_reduce_sum(t), torch.tensor([1.0, 2.0]))
    assert torch.equal(dist_utils.all_gather_cat(t), t)
    assert dist_utils.broadcast_object({"a": 1}) == {"a": 1}
    model = torch.nn.Linear(2, 2)
    assert dist_utils.wrap(model, info, torch.device("cpu")) is model
    compiled = torch.nn.Module()
    compiled._orig_mod = model  # what torch.compile's OptimizedModule holds
    assert dist_utils.unwrap(compiled) is model


def test_bad_environment_is_reported(monkeypatch):
    import pytest

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "five")
    with pytest.raises(ValueError, match="RANK: expected an integer"):
        dist_utils.env_info()
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK: expected 0 ≤ RANK < WORLD_SIZE=2, got 3"):
        dist_utils.env_info()
    with pytest.raises(ValueError, match="sync_bn: SyncBatchNorm needs CUDA"):
        dist_utils.wrap(torch.nn.BatchNorm1d(2), dist_utils.DistInfo(0, 2, 0), torch.device("cpu"), sync_bn=True)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the descendants of torchrun (read from /proc)."""
    import os
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and f"RANK={rank}".encode() in env and int(proc.name) != os.getpid():
            return int(proc.name)
    return None


def test_a_stopped_rank_ends_the_job_naming_it(tmp_path):
    """SIGSTOP one of two gloo ranks mid-run: the other's watchdog notices the missing heartbeat within the stall
    timeout and ends the job with a line naming the rank (instead of waiting for gloo's collective timeout)."""
    import os
    import signal
    import time

    run = tmp_path / "stall"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastfer", *tiny_args(run, 200, extra=["--set", "stall_timeout_s=6"])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (run / "metrics.json").is_file():  # training is under way
            time.sleep(0.5)
        assert (run / "metrics.json").is_file(), "training did not start"
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - stopped_at
    finally:
        if victim is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(victim, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 1 has not answered" in err, err[-2000:]
    assert took < 90, f"the job took {took:.0f} s to end after the rank stopped"
