"""Tiny training settings shared by the training tests: a 2-block APViT at 32², 64 synthetic images."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = ["--set", "model_kwargs={'img_size': 32, 'patch_keep': 12, 'depth': 2, 'embed_dim': 32, "
                       "'num_heads': 2, 'keep_rates': [1.0, 0.9]}"]


def tiny_args(out: Path, epochs: int = 2, train: int = 64, extra: list[str] | None = None) -> list[str]:
    """``fastfer train`` arguments for a run of a few seconds (4 steps per epoch at batch 16)."""
    return ["train", "--out", str(out), "--epochs", str(epochs), "--batch-size", "16", "--threads", "1",
            "--workers", "0", "--no-progress", "--backend", "torch", *TINY_MODEL,
            "--set", f"data_kwargs={{'train_size': {train}, 'val_size': 16, 'test_size': 24}}",
            "--set", "overlay_images=2", *(extra or [])]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_module(args: list[str], timeout: float = 120, module: str = "fastfer") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)
