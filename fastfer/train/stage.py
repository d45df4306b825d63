"""One training stage's moving parts — task, wrapped forward, optimizer, schedule, scaler, EMA, stoppers, sampler
and loader — built together, saved together (:meth:`Stage.state_dict`) and restored together for exact resume."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from fastfer.train import distributed as dist_utils
from fastfer.train.config import ConfigError, TrainConfig
from fastfer.train.data import make_sampler, targets_of, train_loader
from fastfer.train.optim import EMA, EarlyStopping, LRSchedule, build_optimizer
from fastfer.train.task import Task, TrainForward


@dataclass
class Stage:
    index: int
    name: str
    cfg: TrainConfig
    task: Task
    forward: nn.Module  # TrainForward, wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: Optional[EMA]
    stopper: Optional[EarlyStopping]  # stops the stage early
    best: Optional[EarlyStopping]  # only tracks the best epoch (select_best)
    sampler: object
    loader: object
    steps_per_epoch: int
    step_in_stage: int = 0

    @property
    def samples_per_step(self) -> int:
        return self.cfg.schedule.batch_size * self.cfg.schedule.accum_steps

    def state_dict(self) -> dict:
        extras = self.task.extra_modules()
        return dict(step_in_stage=self.step_in_stage, optimizer=self.optimizer.state_dict(),
                    scheduler=self.schedule.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    ema=self.ema.state_dict() if self.ema else None,
                    extras={k: m.state_dict() for k, m in extras.items()},
                    early_stopping=self.stopper.state_dict() if self.stopper else None,
                    select_best=self.best.state_dict() if self.best else None)

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for key, module in self.task.extra_modules().items():
            if key in (state.get("extras") or {}):
                module.load_state_dict(state["extras"][key])
        for obj, key in ((self.stopper, "early_stopping"), (self.best, "select_best")):
            if obj is not None and state.get(key):
                obj.load_state_dict(state[key])
        self.step_in_stage = state["step_in_stage"]


def build_stage(index: int, name: str, cfg: TrainConfig, task: Task, model: nn.Module, train_set, info, device,
                workers: int, amp: Optional[torch.dtype], epoch_offset: int, position: dict) -> Stage:
    """The stage's objects for ``cfg``; ``position`` (epoch, start) places the step counter of a resumed stage."""
    s, r = cfg.schedule, cfg.runtime
    fwd = dist_utils.wrap(TrainForward(task), info, device, sync_bn=r.sync_bn and device.type == "cuda")
    if r.compile:
        if r.deterministic:
            torch.use_deterministic_algorithms(True)  # also sets inductor's deterministic flag
        fwd = torch.compile(fwd)
    extras = nn.ModuleList(task.extra_modules().values())
    optimizer = build_optimizer(model, cfg.optim, extra=extras)
    sampler = make_sampler(cfg.data.sampler, targets_of(train_set), r.seed, info.rank, info.world_size,
                           cfg.data.oversample_thr, cfg.data.oversample_method)
    loader = train_loader(train_set, sampler, s.batch_size, workers, device.type == "cuda")
    steps_per_epoch = (sampler.num_samples // s.batch_size) // s.accum_steps
    if s.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, s.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ConfigError(f"schedule.batch_size: {s.batch_size} × accum_steps {s.accum_steps} exceeds the "
                          f"{sampler.num_samples} training samples per process; lower --batch-size")
    schedule = LRSchedule(optimizer, s, cfg.optim.lr, steps_per_epoch, epoch_offset=epoch_offset)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    stage = Stage(index, name, cfg, task, fwd, optimizer, schedule, scaler,
                  ema=EMA(model, s.ema) if s.ema else None,
                  stopper=EarlyStopping(**s.early_stopping) if s.early_stopping else None,
                  best=EarlyStopping(s.select_best, patience=10**9, restore_best=True) if s.select_best else None,
                  sampler=sampler, loader=loader, steps_per_epoch=steps_per_epoch)
    stage.step_in_stage = position["epoch"] * steps_per_epoch + position["start"] // stage.samples_per_step
    return stage
