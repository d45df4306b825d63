"""Optimizer, learning-rate schedule, EMA and early stopping, each with a ``state_dict`` for exact resume."""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from fastfer.train.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay: bool) -> list[dict]:
    """Trainable parameters; with ``no_decay`` the model's ``no_weight_decay()`` keys and every 1-D parameter
    (norm weights, biases) get weight decay 0 (timm's rule). Without it every parameter decays (APViT as run)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no trainable parameter (every parameter has requires_grad=False)")
    if not no_decay or weight_decay == 0:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, plain = [], []
    for n, p in params:
        (plain if p.ndim <= 1 or n in skip or n.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, extra: Optional[nn.Module] = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters (and ``extra``'s: training-only heads)."""
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    if extra is not None and any(True for _ in extra.parameters()):
        groups += param_groups(extra, cfg.weight_decay, cfg.no_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class LRSchedule:
    """Learning rate as a function of training progress, set on the optimizer before every step.

    ``cosine``: from ``lr`` to ``min_lr`` over the stage; ``step``: × ``gamma`` every ``step_size`` epochs;
    ``inverse_time``: ``lr / (1 + epoch / decay_epochs)`` (Keras InverseTimeDecay per epoch, counting the epochs
    of the whole run); ``constant``; ``plateau``: ``torch.optim.lr_scheduler.ReduceLROnPlateau`` on a metric at
    epoch ends (``mode="max"``, absolute threshold). Linear warm-up over ``warmup_epochs`` for all but plateau.
    ``by="epoch"`` changes the rate at epoch boundaries only (mmcv ``by_epoch``); ``"step"`` continuously.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr: float, steps_per_epoch: int,
                 epoch_offset: int = 0):
        self.opt, self.cfg, self.lr = optimizer, cfg, lr
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.epoch_offset = epoch_offset  # epochs of earlier stages (inverse_time counts the whole run)
        self.plateau = None
        if cfg.name == "plateau":
            p = {**dict(factor=0.1, patience=2, threshold=0.003, min_lr=0.0), **(cfg.plateau or {})}
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=p["factor"], patience=p["patience"], threshold=p["threshold"],
                threshold_mode="abs", min_lr=p["min_lr"])
        for g in optimizer.param_groups:
            g["lr"] = lr

    def factor(self, epoch: float) -> float:
        """``lr(epoch) / lr`` at a (fractional) epoch of this stage."""
        cfg = self.cfg
        if cfg.by == "epoch":
            epoch = float(math.floor(epoch + 1e-9))
        if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
            # linear: the i-th of n warm-up steps (or epochs) runs at (i + 1) / n of the rate
            unit = 1.0 / self.steps_per_epoch if cfg.by == "step" else 1.0
            return min(1.0, (epoch + unit) / cfg.warmup_epochs)
        if cfg.name == "cosine":
            span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
            t = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
            floor = cfg.min_lr / self.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.name == "step":
            return cfg.gamma ** math.floor(epoch / cfg.step_size)
        if cfg.name == "inverse_time":
            return 1.0 / (1.0 + (self.epoch_offset + epoch) / cfg.decay_epochs)
        return 1.0

    def set_for_step(self, step_in_stage: int) -> float:
        """Set the rate for optimizer step ``step_in_stage`` (0-based within this stage); returns it."""
        if self.plateau is not None:
            return self.opt.param_groups[0]["lr"]
        lr = self.lr * self.factor(step_in_stage / self.steps_per_epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def epoch_end(self, metrics: dict, monitor: str = "val_accuracy") -> None:
        if self.plateau is not None and monitor in metrics:
            self.plateau.step(metrics[monitor])

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau is not None else None,
                "lr": [g["lr"] for g in self.opt.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        for g, lr in zip(self.opt.param_groups, state.get("lr", [])):
            g["lr"] = lr


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers (integer buffers copied):
    ``ema = decay · ema + (1 − decay) · model`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k].to(v.dtype), 1.0 - self.decay)
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


class EarlyStopping:
    """Keras ``EarlyStopping(mode="max")``: stop after ``patience`` epochs without ``monitor`` improving by more
    than ``min_delta`` (absolute); with ``restore_best`` the caller restores the best epoch's weights
    (:attr:`best_state`, kept on the CPU)."""

    def __init__(self, monitor: str = "val_accuracy", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.best: Optional[float] = None
        self.best_epoch = -1
        self.wait = 0
        self.best_state: Optional[dict] = None

    def update(self, epoch: int, metrics: dict, model: nn.Module) -> bool:
        """Record this epoch; returns True when training should stop."""
        if self.monitor not in metrics:
            raise KeyError(f"early_stopping.monitor: {self.monitor!r} is not a logged metric; have "
                           f"{sorted(metrics)}")
        value = metrics[self.monitor]
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.wait += 1
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_state = state.get("best_state")
