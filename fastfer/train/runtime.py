"""Run-time choices and small pieces of the engine: device, threads, workers, AMP dtype, determinism, the forward
adapter DDP wraps, stage-wise model updates, and the per-epoch metric files."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from fastfer.utils.precision import resolve_amp

from fastfer.train.config import ConfigError
from fastfer.utils.errors import FastferError


class NonFiniteLossError(FastferError, RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the message names the step and the last good checkpoint."""

    exit_status = 3


RUN_MARKERS = ("config.json", "checkpoints", "model.safetensors", "metrics.json")


def default_run_dir(prefix: str = "") -> Path:
    """``runs/<prefix><YYYYmmdd-HHMMSS>`` in the working directory (a name; :func:`create_run_dir` makes it)."""
    import time

    return Path("runs") / (prefix + time.strftime("%Y%m%d-%H%M%S"))


def create_run_dir(out: Optional[Path] = None, prefix: str = "") -> Path:
    """Make a new run folder and return it; never reuse or overwrite one.

    ``out`` given: it must not exist or be empty — a folder holding a run (or anything else) is refused, so
    ``--out EXISTING_RUN`` without ``--resume`` changes nothing. ``out`` None: ``runs/<prefix><timestamp>``,
    suffixed ``-2``, ``-3`` … when taken. ``os.mkdir`` is atomic, so two processes starting in the same second
    get different folders.
    """
    if out is not None:
        out = Path(out)
        if out.is_dir():
            entries = sorted(p.name for p in out.iterdir())
            if not entries:
                return out
            if set(entries) & set(RUN_MARKERS):
                raise ConfigError(f"--out {out}: holds a training run ({', '.join(e for e in entries if e in RUN_MARKERS)}); "
                                  f"pass --resume {out} to continue it, or choose another --out (nothing was changed)")
            raise ConfigError(f"--out {out}: the folder is not empty ({', '.join(entries[:5])}"
                              f"{' …' if len(entries) > 5 else ''}); choose a new or empty folder (nothing was changed)")
        if out.exists():
            raise ConfigError(f"--out {out}: exists and is not a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(out)
        except FileExistsError:  # another process made it just now
            return create_run_dir(out, prefix)
        return out
    base = default_run_dir(prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"run folder: cannot find a free name next to {base}")


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given (checked)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was requested but no CUDA device is visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_threads(requested: Optional[int], device: torch.device, world_size: int = 1) -> int:
    """CPU intra-op threads. Automatic: all cores of this process's share (cores / processes) while the machine's
    1-minute load average leaves at least half of them idle, else the share minus the busy cores, at least 1 — on a
    shared machine an OpenMP pool larger than the idle cores spins at its barriers (measured on 2 cores:
    apvit_tiny steps 4× slower with 2 threads than with 1 under a load of 10; 1.8× faster with 2 when idle)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads: expected a positive int or None (automatic), got {requested!r}")
        return requested
    share = max(_cores() // max(world_size, 1), 1)
    if device.type != "cpu":
        return min(share, 8)
    load = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0) / max(world_size, 1)
    if load <= share / 2 + 0.5:
        return share
    return max(1, share - math.ceil(load))


def pick_workers(requested: Optional[int], device: torch.device, world_size: int = 1) -> int:
    """DataLoader workers. Automatic: 1 on CPU (the model needs the cores; one worker keeps augmentation off the
    main process's thread pool), min(8, cores / processes) on CUDA."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise ValueError(f"workers: expected an int ≥ 0 or None (automatic), got {requested!r}")
        return requested
    if device.type == "cpu":
        return 1
    return max(1, min(8, _cores() // max(world_size, 1)))


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """``auto``: bf16 on a CUDA device that supports it (else fp16), bf16 on a CPU with native bf16 (AMX /
    AVX512-BF16), else off. ``off`` → None. See :mod:`fastfer.utils.precision`."""
    return resolve_amp(mode, device)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (and no cuDNN autotuning) when asked; cuDNN autotuning otherwise on CUDA."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
            torch.use_deterministic_algorithms(True)
        else:  # the public call imports torch._inductor (seconds) only to set its flag; compile is not in use yet
            torch._C._set_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def log_line(text: str, bar=None) -> None:
    """Print above the progress bars (tqdm.write) or plainly."""
    if bar is not None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout)
    else:
        print(text, flush=True)


class MetricsLog:
    """``metrics.csv`` and ``metrics.json`` (one row per epoch, rewritten atomically from the full history so a
    resumed run keeps a consistent file) and optional TensorBoard scalars. Rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = False):
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(f"tensorboard: the optional TensorBoard logging needs the tensorboard package "
                                  f"(pip install tensorboard): {e}") from None
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def write(self, history: list[dict]) -> None:
        if not self.enabled or not history:
            return
        from fastfer.train.checkpoint import atomic_write_text

        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())
        atomic_write_text(self.out_dir / "metrics.json", json.dumps(history, indent=2) + "\n")
        if self.tb is not None:
            row = history[-1]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "global_epoch", "step"):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
