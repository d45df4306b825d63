"""The training engine: one :class:`Trainer` runs a resolved :class:`~fastfer.train.config.TrainConfig` into a run
folder (checkpoints, metrics, test report, confusion matrix, the task's overlay) and resumes it exactly.

The engine knows no model: everything model-specific — the training forward, the loss, what evaluation scores,
stage updates, the overlay — comes from the model family's task (:mod:`fastfer.train.task`,
:mod:`fastfer.train.recipes`).

Per optimizer step: ``accum_steps`` micro-batches under autocast (bf16 / fp16 with a GradScaler), a finite-loss
check (a NaN/inf loss stops the run naming the step; the last good checkpoint stays), gradient clipping, the
step, EMA, the learning rate for the next step. The global RNG is re-seeded from ``(seed, rank, step)`` at every
step and augmentation is seeded per sample (see :mod:`fastfer.train.data`), so a resumed run replays exactly
what the uninterrupted one would have done (bit-identical in fp32 with ``deterministic``).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fastfer import ops
from fastfer.train import checkpoint as ckpt
from fastfer.train import distributed as dist_utils
from fastfer.train.config import ConfigError, TrainConfig
from fastfer.train.data import (Augmented, build_splits, describe_counts, eval_loader, make_transforms, sample_seed,
                                targets_of)
from fastfer.train.evaluate import autocast, metrics_from_predictions, predict_loader, report_from_predictions
from fastfer.train.recipes import stage_configs, task_class
from fastfer.train.runtime import (MetricsLog, NonFiniteLossError, amp_dtype, create_run_dir, log_line, pick_device,
                                   pick_threads, pick_workers, set_determinism)
from fastfer.train.stage import Stage, build_stage
from fastfer.utils.precision import describe_amp

STEP_SEED_TAG = 0x5EED  # keeps the per-step seeds apart from the per-sample seeds


class Trainer:
    """Train ``cfg`` into ``out_dir``; ``resume=True`` continues the run saved there."""

    def __init__(self, cfg: TrainConfig, out_dir: Optional[str | os.PathLike] = None, resume: bool = False,
                 progress: bool = True):
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.out_dir = Path(out_dir) if out_dir is not None else None  # None: runs/<timestamp> of rank 0

    def run(self) -> dict:
        """Train every stage, evaluate the test split, write the run folder. Returns the summary dict.

        The op backend is pinned to ``runtime.backend`` for the whole run (None: the process's pin, else automatic).
        """
        backend = self.cfg.runtime.backend
        with ops.use_backend(backend) if backend else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        self._setup_runtime()
        # Ready the op kernels now (on CPU a fresh install builds the C++ kernels here, once, with its own
        # progress line) rather than inside the first training step.
        self.op_backends = ops.prepare(self.device, self.amp or torch.float32)
        resume_state, weights = self._read_resume_state() if self.resume else (None, None)
        self._setup_run_folder()
        try:
            model = self._build_model_and_data()
        except BaseException:
            self._drop_empty_run_folder()  # a run that failed before writing anything leaves no folder behind
            raise
        if self.main:
            ckpt.atomic_write_text(self.out_dir / "config.json", json.dumps(self.cfg.to_json(), indent=2) + "\n")
            log_line(f"run folder {self.out_dir}\n" + self._describe())
        history = list(resume_state["history"]) if resume_state else []
        pos = dict(stage=0, epoch=0, start=0, global_epoch=0, global_step=0, stage_done=False)
        if resume_state:
            pos.update({k: resume_state[k] for k in pos})
        finished = bool(resume_state and resume_state.get("finished"))
        stages = stage_configs(self.cfg)
        self._last_stage: Optional[Stage] = None
        self._pos, self._history = pos, history
        for index, (name, cfg, updates) in enumerate(stages):
            resuming_here = resume_state is not None and index == pos["stage"]
            if finished or index < pos["stage"]:
                self._task.begin_stage(name, updates)  # rebuild the model's structure as the stage left it
                continue
            self._task.set_config(cfg)
            self._task.begin_stage(name, updates)
            if resuming_here:
                model.load_state_dict(weights)
            self._run_stage(model, index, name, cfg, pos, history, resume_state if resuming_here else None)
            resume_state = None
            pos.update(stage=index + 1, epoch=0, start=0, stage_done=False)
        if finished:
            model.load_state_dict(weights)  # a finished run resumed: only the test and the files are redone
        summary = self._finish(model, history, t_start, finished)
        self.log.close()
        dist_utils.barrier()
        return summary

    # --- setup ------------------------------------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        r = self.cfg.runtime
        self.device = pick_device(r.device)
        self.info = dist_utils.init(self.device.type, timeout_s=r.collective_timeout_s,
                                    stall_timeout_s=r.stall_timeout_s)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.threads = pick_threads(r.threads, self.device, self.info.world_size)
        torch.set_num_threads(self.threads)
        self.workers = pick_workers(r.workers, self.device, self.info.world_size)
        set_determinism(r.deterministic, self.device)
        torch.manual_seed(r.seed + self.info.rank)
        self.amp = amp_dtype(r.amp, self.device)
        # channels_last by default: measured on the 2-core CPU, the main job's train step (B=64, 64²) is 1.24× faster
        # (oneDNN's convolutions prefer it), and on CUDA cuDNN's do; the numbers are the same math.
        self.channels_last = r.channels_last if r.channels_last is not None else True
        self.main = self.info.is_main

    def _read_resume_state(self) -> tuple[dict, dict]:
        folder, weights, _meta, state, note = ckpt.load_resumable(self.out_dir)
        if note and self.main:
            log_line(f"warning: {note}")
        if state.get("world_size", 1) != self.info.world_size:
            raise ConfigError(f"resume: {folder} was saved with {state.get('world_size')} processes, this run has "
                              f"{self.info.world_size}; exact resume needs the same world size")
        return state, weights

    def _setup_run_folder(self) -> None:
        """Rank 0 makes a new run folder (never an existing run's; see create_run_dir) and tells the others;
        a refusal reaches every rank."""
        if not self.resume:
            answer = None
            if self.main:
                try:
                    answer = str(create_run_dir(self.out_dir))
                except ConfigError as exc:
                    answer = "\0" + str(exc)
            answer = dist_utils.broadcast_object(answer)
            if answer.startswith("\0"):
                raise ConfigError(answer[1:])
            self.out_dir = Path(answer)
        self.ckpt_root = self.out_dir / ckpt.CHECKPOINT_DIR
        self.log = MetricsLog(self.out_dir, enabled=self.main, tensorboard=self.cfg.runtime.tensorboard)

    def _drop_empty_run_folder(self) -> None:
        if self.main and not self.resume and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def _preprocessing(self) -> tuple[int, tuple, tuple]:
        """(input side, mean, std): the model's registered pretrained_cfg, overridden by img_size / input_size."""
        import timm

        import fastfer.models  # noqa: F401 — registers every fastfer model with timm

        cfg = self.cfg
        pcfg = timm.models.get_pretrained_cfg(cfg.model.name)
        if pcfg is None:
            raise ConfigError(f"model.name: {cfg.model.name!r} is not a registered fastfer model")
        pcfg = pcfg.to_dict()
        img_size = cfg.model.kwargs.get("img_size")
        size = cfg.data.input_size or (img_size if isinstance(img_size, int) else None) or int(pcfg["input_size"][-1])
        mean, std = pcfg.get("mean", (0.485, 0.456, 0.406)), pcfg.get("std", (0.229, 0.224, 0.225))
        if cfg.data.transform != "light":
            from fastfer.data.transforms import normalization

            mean, std = normalization(cfg.data.transform)
        return size, tuple(mean), tuple(std)

    def _build_model_and_data(self) -> nn.Module:
        """The data first (its label names size the classifier), then the model and its task."""
        from fastfer.models import create_model

        cfg = self.cfg
        self.image_size, self.mean, self.std = self._preprocessing()
        self._build_data()
        self.label_names = tuple(self.splits.label_names)
        kwargs = dict(cfg.model.kwargs)
        if cfg.model.text_encoder:
            kwargs["text_encoder"] = cfg.model.text_encoder
        model = create_model(cfg.model.name, num_classes=len(self.label_names), label_names=list(self.label_names),
                             **kwargs)
        if not self.resume:
            self._load_init_weights(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._task = task_class(cfg.model.name)(model, cfg, self.label_names, targets_of(self.splits.train))
        self._task.check()
        return model

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.splits = build_splits(d.spec, d.kwargs, d.val_fraction, d.val_source, self.image_size, cfg.runtime.seed,
                                   workers=self.workers, labels=d.labels)
        size, mean, std = self.image_size, self.mean, self.std
        self.train_set = Augmented(self.splits.train, make_transforms(d.transform, size, mean, std, True))
        test_tf = make_transforms(d.transform, size, mean, std, False)
        self.val_set = Augmented(self.splits.val, test_tf)
        self.test_set = Augmented(self.splits.test, test_tf)
        if self.cfg.runtime.workers is None and self.train_set.batches_in_memory:
            # in-memory images through a batch transform: about 1 ms per batch in this process, where a worker
            # process would only compete with the step for the cores (measured on the 2-core CPU: see light.py)
            self.workers = 0
        self.validate = len(self.splits.val) > 0
        if not self.validate:
            self._no_validation()
        eb = cfg.schedule.eval_batch_size or 2 * cfg.schedule.batch_size
        pin = self.device.type == "cuda"
        self.val_loader = eval_loader(self.val_set, eb, self.workers, self.info.rank, self.info.world_size, pin)
        self.test_loader = eval_loader(self.test_set, eb, self.workers, self.info.rank, self.info.world_size, pin)

    def _no_validation(self) -> None:
        """The documented fallback for a dataset too small to give a validation image: train without per-epoch
        validation (no val_* metrics) and say so — unless the recipe needs them, which is an error naming why."""
        s, d = self.cfg.schedule, self.cfg.data
        needs = [f"{name} monitors {monitor}" for name, monitor in
                 (("schedule.early_stopping", (s.early_stopping or {}).get("monitor", "")),
                  ("schedule.select_best", s.select_best or "")) if monitor.startswith("val_")]
        if any(c.schedule.name == "plateau" for _, c, _ in stage_configs(self.cfg)):
            needs.append("the plateau schedule follows val_accuracy")
        where = f"{self.splits.val_from}, from {len(self.splits.train)} training images"
        if needs:
            raise ConfigError(f"data: the validation split is empty ({where}) but {'; '.join(needs)}; use more data "
                              f"or a larger --set val_fraction=… (now {d.val_fraction})")
        if self.main:
            log_line(f"note: the validation split is empty ({where}); training without per-epoch validation "
                     f"(use more data or a larger --set val_fraction=… to get val metrics)")

    def _load_init_weights(self, model: nn.Module) -> None:
        """Load each ``model.init_weights`` file (a partial fastfer state_dict) into the fresh model."""
        from fastfer.models.weights import load_partial

        for path in self.cfg.model.init_weights:
            left = load_partial(model, path)
            if self.main:
                total = len(model.state_dict())
                log_line(f"init: {total - len(left)} of {total} tensors from {path}; {len(left)} keep their "
                         f"initialisation")

    def _metadata(self) -> dict:
        import fastfer

        cfg = self.cfg
        kwargs = {k: v for k, v in cfg.model.kwargs.items() if k != "text_encoder"}
        d = cfg.data
        # Everything that defines the data, so `fastfer eval --checkpoint RUN` rebuilds the run's own test split.
        data_split = dict(val_fraction=d.val_fraction, val_source=d.val_source, seed=cfg.runtime.seed,
                          labels=d.labels)
        return dict(model=cfg.model.name, model_kwargs=kwargs, num_classes=len(self.label_names),
                    label_names=list(self.label_names), recipe=cfg.recipe, data=d.spec, data_kwargs=dict(d.kwargs),
                    data_split=data_split,
                    preprocessing=dict(input_size=[3, self.image_size, self.image_size], mean=list(self.mean),
                                       std=list(self.std), interpolation="bilinear",
                                       alignment=self.splits.alignment, test_transform=cfg.data.transform),
                    fastfer_version=fastfer.__version__)

    def _describe(self) -> str:
        cfg, s = self.cfg, self.splits
        lines = [
            f"model {cfg.model.name} {cfg.model.kwargs or ''} | recipe {cfg.recipe} | data {cfg.data.spec} | "
            f"input {self.image_size}² | classes {', '.join(self.label_names)}",
            f"train {len(s.train)} ({describe_counts(targets_of(s.train), self.label_names)}); val {len(s.val)} "
            f"({s.val_from}); test {len(s.test)} ({s.test_from})",
            f"device {self.device} | threads {self.threads} | workers {self.workers} | processes "
            f"{self.info.world_size} | compile {cfg.runtime.compile} | channels_last {self.channels_last} | seed "
            f"{cfg.runtime.seed}",
            describe_amp(cfg.runtime.amp, self.device) + " | ops " + ", ".join(
                f"{op} → {name}" for op, name in self.op_backends.items())
            + ("" if cfg.runtime.backend is None else f" (pinned {cfg.runtime.backend})"),
        ]
        if hasattr(os, "getloadavg"):
            lines[-2] += f" | load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        return "\n".join(lines)

    # --- one stage ----------------------------------------------------------------------------------------------
    def _run_stage(self, model: nn.Module, index: int, name: str, cfg: TrainConfig, pos: dict, history: list,
                   state: Optional[dict]) -> None:
        stage = build_stage(index, name, cfg, self._task, model, self.train_set, self.info, self.device, self.workers,
                            self.amp, epoch_offset=pos["global_epoch"], position=pos)
        if state is not None:
            stage.load_state_dict(state)
        self._last_stage = stage
        epochs = cfg.schedule.epochs
        first_epoch = epochs if pos.get("stage_done") else pos["epoch"]
        bar = self._bar(total=epochs, initial=first_epoch, desc=f"{name} epochs", position=0)
        for epoch in range(first_epoch, epochs):
            start = pos["start"] if epoch == first_epoch else 0
            row = self._train_epoch(stage, model, epoch, start, pos, state if epoch == first_epoch else None)
            history.append(row)
            pos["global_epoch"] += 1
            stop = self._end_epoch(stage, model, epoch, row, history, bar)
            self._save(stage, model, epoch + 1, 0, stage_done=stop or epoch + 1 == epochs)
            if stop:
                break
        if bar is not None:
            bar.close()
        stage.task.close()

    def _train_epoch(self, stage: Stage, model: nn.Module, epoch: int, start: int, pos: dict,
                     state: Optional[dict]) -> dict:
        """The steps of one epoch from sample ``start`` on; returns its metrics row (validation included)."""
        cfg = stage.cfg
        stage.sampler.set_epoch(pos["global_epoch"], start)
        model.train()
        t0 = time.perf_counter()
        done = start // stage.samples_per_step
        self._epoch_sums = sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n (this rank)
        if start and state is not None and state.get("epoch_sums") is not None:
            if self.main:  # the saved sums are over all ranks: count them once
                sums += state["epoch_sums"]
            t0 -= state.get("epoch_elapsed", 0.0)
        self._epoch_t0 = t0
        sbar = self._bar(total=stage.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                         position=1, leave=False)
        it = iter(stage.loader)
        t_win, n_win = time.perf_counter(), 0
        for step in range(done, stage.steps_per_epoch):
            lr = stage.schedule.set_for_step(stage.step_in_stage)
            torch.manual_seed(sample_seed(self.cfg.runtime.seed, STEP_SEED_TAG, self.info.rank, pos["global_step"]))
            loss_v, correct, n = self._train_step(stage, it, pos["global_step"], epoch, step)
            if stage.ema is not None:
                stage.ema.update(model)
            stage.step_in_stage += 1
            pos["global_step"] += 1
            sums += torch.tensor([loss_v * n, correct, n], dtype=torch.float64)
            n_win += n
            if sbar is not None:
                if (step + 1) % self.cfg.runtime.log_every == 0:
                    dt = time.perf_counter() - t_win
                    sbar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.3f}", acc=f"{sums[1] / max(sums[2], 1):.3f}",
                                     lr=f"{lr:.2e}", img_s=f"{n_win * self.info.world_size / max(dt, 1e-9):.0f}")
                    t_win, n_win = time.perf_counter(), 0
                sbar.update(1)
            every = self.cfg.runtime.save_every_steps
            if every and pos["global_step"] % every == 0 and step + 1 < stage.steps_per_epoch:
                self._save(stage, model, epoch, (step + 1) * stage.samples_per_step)
        del it
        if sbar is not None:
            sbar.close()
        dist_utils.all_reduce_sum(sums)
        return self._epoch_row(stage, model, epoch, pos, sums, time.perf_counter() - t0)

    def _train_step(self, stage: Stage, it, global_step: int, epoch: int, step: int) -> tuple[float, float, int]:
        """One optimizer step over ``accum_steps`` micro-batches; returns (mean loss, correct, samples)."""
        accum, fwd, task = stage.cfg.schedule.accum_steps, stage.forward, stage.task
        total_loss, correct, n = 0.0, 0.0, 0
        for micro in range(accum):
            x, y = next(it)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            sync = micro == accum - 1 or not hasattr(fwd, "no_sync")
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                with autocast(self.device, self.amp):
                    loss, logits = task.loss(fwd(x), y)
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at optimizer step {global_step + 1} (epoch {epoch + 1}, batch "
                        f"{step + 1}, micro-batch {micro + 1}/{accum}); training stopped. The last good "
                        f"checkpoint is {self._latest_checkpoint()}")
                stage.scaler.scale(loss / accum).backward()
            total_loss += float(loss.detach()) * len(y)
            hard = y.argmax(1) if y.is_floating_point() else y  # soft targets (FERPlus probability modes)
            correct += float((logits.detach().argmax(1) == hard).sum())
            n += len(y)
        clip = stage.cfg.optim.grad_clip
        if clip:
            stage.scaler.unscale_(stage.optimizer)
            params = [p for g in stage.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if not stage.scaler.is_enabled() and not bool(torch.isfinite(norm)):
                raise NonFiniteLossError(
                    f"gradient norm is {float(norm)} at optimizer step {global_step + 1} (epoch {epoch + 1}); "
                    f"training stopped. The last good checkpoint is {self._latest_checkpoint()}")
        stage.scaler.step(stage.optimizer)
        stage.scaler.update()
        stage.optimizer.zero_grad(set_to_none=True)
        return total_loss / max(n, 1), correct, n

    def _epoch_row(self, stage: Stage, model: nn.Module, epoch: int, pos: dict, sums, elapsed: float) -> dict:
        n = max(float(sums[2]), 1.0)
        row = dict(stage=stage.name, epoch=epoch + 1, global_epoch=pos["global_epoch"] + 1, step=pos["global_step"],
                   lr=stage.optimizer.param_groups[0]["lr"], train_loss=float(sums[0]) / n,
                   train_accuracy=float(sums[1]) / n, images_per_s=float(sums[2]) / max(elapsed, 1e-9),
                   epoch_time_s=elapsed)
        if self.validate:
            row.update(self._evaluate(stage.ema.module if stage.ema else model, self.val_loader, "val"))
        return row

    def _evaluate(self, model: nn.Module, loader, prefix: str) -> dict:
        pred = predict_loader(model, loader, self.device, self.amp, self.channels_last,
                              outputs=self._task.eval_outputs)
        return metrics_from_predictions(pred, len(self.label_names), prefix)

    def _end_epoch(self, stage: Stage, model: nn.Module, epoch: int, row: dict, history: list, bar) -> bool:
        """Schedule, stoppers, logs, best-weight restore at the stage's end; returns whether to stop early."""
        epochs = stage.cfg.schedule.epochs
        stage.schedule.epoch_end(row)
        stop = stage.stopper.update(epoch, row, model) if stage.stopper else False
        if stage.best is not None:
            stage.best.update(epoch, row, stage.ema.module if stage.ema else model)
        self.log.write(history)
        if self.main:
            log_line(_format_row(row, epochs), bar)
        if bar is not None:
            bar.update(1)
        if stop or epoch + 1 == epochs:
            restore = stage.best or (stage.stopper if stage.stopper and stage.stopper.restore_best else None)
            if restore is not None and restore.best_state is not None:
                target = stage.ema.module if stage.ema and restore is stage.best else model
                target.load_state_dict(restore.best_state)
                if self.main:
                    log_line(f"{stage.name}: restored the weights of epoch {restore.best_epoch + 1} "
                             f"({restore.monitor} {restore.best:.4f})", bar)
            if stage.ema is not None:
                model.load_state_dict(stage.ema.state_dict())  # the final weights of a stage are the EMA weights
        if stop and self.main:
            s = stage.stopper
            log_line(f"{stage.name}: early stop after epoch {epoch + 1} ({s.monitor} did not improve by "
                     f"{s.min_delta} for {s.patience} epochs)", bar)
        return stop

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def _save(self, stage: Stage, model: nn.Module, epoch: int, start: int, stage_done: bool = False,
              finished: bool = False) -> None:
        """Checkpoint at (stage, epoch, sample ``start`` within the epoch) with everything exact resume needs."""
        pos = self._pos
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:  # never let a broken model replace the last good checkpoint
            raise NonFiniteLossError(
                f"weights became non-finite ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}) by optimizer step "
                f"{pos['global_step']}; training stopped. The last good checkpoint is {self._latest_checkpoint()}")
        partial = dist_utils.all_reduce_sum(self._epoch_sums.clone()) if start else None  # the epoch so far
        state = dict(stage=stage.index, epoch=epoch, start=start, epoch_sums=partial,
                     epoch_elapsed=time.perf_counter() - self._epoch_t0 if start else 0.0,
                     global_epoch=pos["global_epoch"], global_step=pos["global_step"], stage_done=stage_done,
                     finished=finished, history=self._history,
                     rng=ckpt.rng_state(), world_size=self.info.world_size, config=self.cfg.to_json(),
                     **stage.state_dict())
        if self.main:
            ckpt.save_checkpoint(self.ckpt_root, pos["global_step"], model.state_dict(), self._metadata(), state,
                                 keep=self.cfg.runtime.keep_checkpoints)
        dist_utils.barrier()

    def _latest_checkpoint(self) -> str:
        name = ckpt.read_latest(self.ckpt_root)
        return str(self.ckpt_root / name) if name else "none (no checkpoint was written yet)"

    def _bar(self, **kwargs):
        if not (self.main and self.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(dynamic_ncols=True, **kwargs)

    # --- the end of the run -------------------------------------------------------------------------------------
    def _finish(self, model: nn.Module, history: list, t_start: float, already_finished: bool) -> dict:
        cfg = self.cfg
        if not already_finished and self._last_stage is not None:
            self._save(self._last_stage, model, 0, 0, stage_done=True, finished=True)
        t_test = time.perf_counter()
        pred = predict_loader(model, self.test_loader, self.device, self.amp, self.channels_last,
                              outputs=self._task.eval_outputs)
        report = report_from_predictions(pred, self.label_names)
        calibration = self._calibrate(model, pred)
        if calibration is not None:
            report["calibration"] = calibration
        summary = dict(test=dict(accuracy=report["accuracy"], mean_class_accuracy=report["mean_class_accuracy"],
                                 macro_f1=report["macro_f1"], n=report["n"]),
                       epochs=len(history), steps=history[-1]["step"] if history else 0,
                       train_time_s=sum(r["epoch_time_s"] for r in history),
                       device=str(self.device), threads=self.threads, processes=self.info.world_size)
        if self.main:
            from fastfer.train.metrics import format_report, write_report

            paths = write_report(report, self.out_dir, "test", png=True,
                                 title=f"{cfg.model.name} on {cfg.data.spec} test — accuracy {report['accuracy']:.1%}")
            overlay = self._task.write_overlay(self.val_set, cfg.runtime.overlay_images, self.out_dir / "app_overlay.png",
                                               self.mean, self.std, self.device)
            meta = {**self._metadata(), "epoch": len(history), "step": summary["steps"], "metrics": summary["test"]}
            if calibration is not None:
                meta["calibration"] = {k: v for k, v in calibration.items() if not k.startswith("test_")}
            weights = ckpt.save_weights(self.out_dir / ckpt.WEIGHTS_FILE, model.state_dict(), meta)
            summary["total_time_s"] = time.perf_counter() - t_start
            summary["test_time_s"] = time.perf_counter() - t_test
            summary["files"] = [str(p) for p in [weights, *paths, overlay] if p]
            ckpt.atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            log_line("test split:\n" + format_report(report))
            log_line(f"wrote {', '.join(os.path.relpath(p, self.out_dir) for p in summary['files'])}, metrics.csv, "
                     f"metrics.json, config.json, summary.json in {self.out_dir}  "
                     f"(total {summary['total_time_s']:.0f} s)")
        return summary


    def _calibrate(self, model: nn.Module, test_pred: dict) -> Optional[dict]:
        """Temperature scaling fitted on the validation split (the label head's logits), with the NLL/ECE before
        and after on validation and on the test split; None without validation images. Predictions then use
        softmax(logits / T): the argmax, hence every accuracy, is unchanged."""
        from fastfer.train.calibration import calibration_record, expected_calibration_error

        if not self.validate:
            if self.main:
                log_line("note: no validation images, so no temperature calibration (probabilities as trained)")
            return None
        val = predict_loader(model, self.val_loader, self.device, self.amp, self.channels_last)
        record = calibration_record(val["logits"], val["targets"].long(), split="val")
        t = record["temperature"]
        logits, y = test_pred["logits"].double(), test_pred["targets"].long()
        record["test_ece_before"] = round(expected_calibration_error(logits.softmax(-1), y, record["bins"]), 6)
        record["test_ece_after"] = round(expected_calibration_error((logits / t).softmax(-1), y, record["bins"]), 6)
        if self.main:
            log_line(f"calibration: temperature {t:.3f} (validation ECE {record['ece_before']:.3f} → "
                     f"{record['ece_after']:.3f}; test ECE {record['test_ece_before']:.3f} → "
                     f"{record['test_ece_after']:.3f})")
        return record


def _format_row(row: dict, epochs: int) -> str:
    extra = "".join(f" {k[4:]} {row[k]:.3f}" for k in ("val_text_accuracy", "val_fused_accuracy") if k in row)
    val = (f"val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f} mca {row['val_mean_class_accuracy']:.3f} "
           f"F1 {row['val_macro_f1']:.3f}{extra}" if "val_loss" in row else "no validation")
    return (f"[{row['stage']}] epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.3f} acc "
            f"{row['train_accuracy']:.3f} | {val} | lr {row['lr']:.2e} | {row['images_per_s']:.0f} img/s | "
            f"{row['epoch_time_s']:.0f} s")
