"""Task objects: what one model family needs from the training engine, so the engine itself knows no model.

A task says what the forward returns in training (:class:`TrainForward` wraps it for DDP / ``torch.compile``), how
the loss is computed from it, what evaluation scores (:meth:`Task.eval_outputs`: the label head, plus extra heads
such as FER-former's text head), what changes between stages of a multi-stage recipe (:meth:`Task.begin_stage`:
dropout rates, a LayerNorm slot, which part trains) and whether it can draw a pooling overlay. Each family's task
lives beside its recipe in :mod:`fastfer.train.recipes`; :class:`ClassifierTask` is the plain cross-entropy one.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastfer.train.config import ConfigError, TrainConfig


class Task:
    """Base task: subclasses implement :meth:`forward` and :meth:`loss`."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, label_names: Sequence[str], train_targets: Sequence[int]):
        self.model, self.cfg, self.label_names = model, cfg, tuple(label_names)
        self.train_targets = list(train_targets)

    # --- checks and stages ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise a :class:`ConfigError` when the model cannot be trained with this config (e.g. missing inputs)."""

    def begin_stage(self, stage: str, updates: dict) -> None:
        """Apply a stage's ``model_updates``; the base task knows none."""
        if updates:
            raise ConfigError(f"stages.{stage}.model_updates: {type(self).__name__} takes no model updates, got "
                              f"{sorted(updates)}")

    def set_config(self, cfg: TrainConfig) -> None:
        """The config of the stage now running (loss weights, smoothing and so on may differ per stage)."""
        self.cfg = cfg

    # --- training -------------------------------------------------------------------------------------------------
    def extra_modules(self) -> dict[str, nn.Module]:
        """Training-only modules trained with the model and kept in the resume state, never in the weights."""
        return {}

    def forward(self, x: Tensor):
        """What the training forward returns (the engine passes it to :meth:`loss` unchanged)."""
        raise NotImplementedError

    def loss(self, out, y: Tensor) -> tuple[Tensor, Tensor]:
        """(scalar loss, label-head logits (B, C) for the running accuracy)."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove hooks and the like at the end of a stage."""

    # --- evaluation -----------------------------------------------------------------------------------------------
    @staticmethod
    def eval_outputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """The heads evaluation scores: ``logits`` (B, C) at least."""
        return {"logits": model(x)}

    def write_overlay(self, dataset, count: int, path: str | os.PathLike, mean, std, device) -> Optional[str]:
        """A picture of what the model attends to for ``count`` validation faces, or None when it has none."""
        return None


class TrainForward(nn.Module):
    """The module DDP and ``torch.compile`` wrap: ``forward(x)`` = the task's training forward. It owns the model
    and the task's training-only modules, so DDP synchronises their gradients too."""

    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.model = task.model
        self.extras = nn.ModuleDict(task.extra_modules())

    def forward(self, x: Tensor):
        return self.task.forward(x)


class ClassifierTask(Task):
    """Cross-entropy on the logits (``ce``; ``ce_balanced``: Keras/sklearn "balanced" class weights n / (K·n_c)),
    soft targets accepted (FERPlus probability modes), label smoothing, and optional deep supervision of a CNN
    trunk: ``loss.aux_trunk_weight`` · CE of a linear classifier on the flattened output map of
    ``model.<loss.aux_trunk_module>`` (grabbed by a forward hook; training-only)."""

    def __init__(self, model, cfg, label_names, train_targets):
        super().__init__(model, cfg, label_names, train_targets)
        self.aux_head: Optional[nn.Linear] = None
        self._hook, self._feat = None, None
        if cfg.loss.aux_trunk_weight > 0:
            self._attach_aux_head(cfg.loss.aux_trunk_module)
        self._class_weights = self._balanced_weights() if cfg.loss.name == "ce_balanced" else None

    def check(self) -> None:
        if self.cfg.loss.name not in ("ce", "ce_balanced"):
            raise ConfigError(f"loss.name: {type(self.model).__name__} trains with ce or ce_balanced, got "
                              f"{self.cfg.loss.name!r}")

    def _attach_aux_head(self, name: str) -> None:
        trunk = getattr(self.model, name, None)
        width = getattr(trunk, "out_channels", None)
        if not isinstance(trunk, nn.Module) or not isinstance(width, int):
            raise ConfigError(f"loss.aux_trunk_module: {type(self.model).__name__}.{name} is not a trunk with an int "
                              f"'out_channels' (APViT: 'extractor')")
        grid = getattr(self.model, "grid_size", None)
        if grid is None:
            raise ConfigError(f"loss.aux_trunk_module: {type(self.model).__name__} has no 'grid_size' (the trunk "
                              f"map's H, W) for the trunk head")
        ref = next(self.model.parameters())
        # A linear classifier on the whole flattened map, not on its spatial mean: the shallow demo trunk is nearly
        # linear, so its mean over positions carries almost no expression (measured: 16 % after 3 epochs with the
        # mean, 68 % with the flattened map).
        self.aux_head = nn.Linear(width * grid[0] * grid[1], len(self.label_names)).to(ref.device)
        self._hook = trunk.register_forward_hook(self._grab)

    def _grab(self, module, inputs, output) -> None:
        self._feat = output

    def _balanced_weights(self) -> Tensor:
        t = torch.tensor(self.train_targets)
        counts = torch.bincount(t, minlength=len(self.label_names)).double()
        present = (counts > 0).sum()
        w = torch.where(counts > 0, len(t) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
        return w.float()

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"aux_head": self.aux_head} if self.aux_head is not None else {}

    def forward(self, x: Tensor):
        logits = self.model(x)
        if self.aux_head is None:
            return logits
        feat, self._feat = self._feat, None
        return logits, self.aux_head(feat.float().flatten(1))

    def loss(self, out, y: Tensor) -> tuple[Tensor, Tensor]:
        aux = None
        if isinstance(out, tuple):
            out, aux = out
        loss = self.cross_entropy(out, y)
        if aux is not None:
            loss = loss + self.cfg.loss.aux_trunk_weight * F.cross_entropy(aux.float(), y)
        return loss, out

    def cross_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        smoothing = self.cfg.loss.label_smoothing
        if self._class_weights is None:
            return F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        w_cls = self._class_weights.to(logits.device)
        per = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
        w = y.float() @ w_cls if y.is_floating_point() else w_cls[y]  # soft targets: expected weight
        return (per * w).mean()  # Keras: weighted per sample, mean over the batch

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._feat = None, None
