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
from torch import nn


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the message names the step and the last good checkpoint."""


def default_run_dir(prefix: str = "") -> Path:
    """``runs/<prefix><YYYYmmdd-HHMMSS>`` in the working directory."""
    import time

    return Path("runs") / (prefix + time.strftime("%Y%m%d-%H%M%S"))


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
    """``auto``: bf16 on a CUDA device that supports it, else fp16 on CUDA, else off (CPU). ``off`` → None."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {mode!r}")


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


class TrainForward(nn.Module):
    """What DDP and ``torch.compile`` wrap: ``forward(x)`` returns the logits, or for FER-former training the
    :class:`~fastfer.models.fer_former.FerFormerOutput` fields as a tuple (both heads).

    With ``aux_module`` (deep supervision of a CNN trunk) it also owns ``aux_head``, a linear classifier on the
    flattened output map of ``model.<aux_module>`` (grabbed by a forward hook), and returns
    ``(logits, aux_logits)``; the head is training-only and never saved with the model. Call :meth:`close` to
    remove the hook.
    """

    def __init__(self, model: nn.Module, kind: str = "logits", aux_module: Optional[str] = None,
                 num_classes: int = 0):
        super().__init__()
        if kind == "fer_former" and not hasattr(model, "forward_outputs"):
            raise ValueError(f"loss: 'fer_former' needs a FER-former model, got {type(model).__name__}")
        self.model, self.kind = model, kind
        self.aux_head, self._hook, self._feat = None, None, None
        if aux_module:
            if kind != "logits":
                raise ValueError("aux_trunk_weight: the trunk loss combines only with the plain logits losses")
            trunk = getattr(model, aux_module, None)
            width = getattr(trunk, "out_channels", None)
            if not isinstance(trunk, nn.Module) or not isinstance(width, int):
                raise ValueError(f"aux_trunk_module: {type(model).__name__}.{aux_module} is not a trunk with an "
                                 f"int 'out_channels' (APViT: 'extractor')")
            grid = getattr(model, "grid_size", None)
            if grid is None:
                raise ValueError(f"aux_trunk_module: {type(model).__name__} has no 'grid_size' (the trunk map's "
                                 f"H, W) for the trunk head")
            ref = next(model.parameters())
            # A linear classifier on the whole flattened map, not on its spatial mean: the shallow demo trunk is
            # nearly linear, so its mean over positions carries almost no expression (measured: 16 % after 3
            # epochs with the mean, 68 % with the flattened map).
            self.aux_head = nn.Linear(width * grid[0] * grid[1], num_classes).to(ref.device)
            self._hook = trunk.register_forward_hook(self._grab)

    def _grab(self, module, inputs, output) -> None:
        self._feat = output

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._feat = None, None

    def forward(self, x: torch.Tensor):
        if self.kind == "fer_former":
            return tuple(self.model.forward_outputs(x))
        logits = self.model(x)
        if self.aux_head is None:
            return logits
        feat, self._feat = self._feat, None
        return logits, self.aux_head(feat.float().flatten(1))


def apply_model_updates(model: nn.Module, updates: dict) -> None:
    """Stage-wise changes of a multi-stage recipe (Conv-cut): ``drop_rate`` sets every Dropout's p;
    ``det_norm`` adds (True) or removes (False) the LayerNorm after the Conv-cut DET block."""
    for key, value in (updates or {}).items():
        if key == "drop_rate":
            for m in model.modules():
                if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
                    m.p = float(value)
            if hasattr(model, "drop_rate"):
                model.drop_rate = float(value)
        elif key == "det_norm":
            if not hasattr(model, "layernorm"):
                raise ValueError(f"model_updates.det_norm: model {type(model).__name__} has no DET LayerNorm slot")
            if value and model.layernorm is None:
                from timm.layers import LayerNorm

                ref = next(model.parameters())
                model.layernorm = LayerNorm(model.num_features, eps=1e-6).to(ref.device)
            elif not value:
                model.layernorm = None
        else:
            raise ValueError(f"model_updates: unknown key {key!r} (known: drop_rate, det_norm)")


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
