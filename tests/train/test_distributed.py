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
