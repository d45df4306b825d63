"""The training engine: one :class:`Trainer` runs a resolved :class:`~fastfer.train.recipes.TrainConfig` into a
run folder (checkpoints, metrics, test report, confusion matrix, APP/ATP overlay) and resumes it exactly.

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
import torch.nn.functional as F
from torch import nn

from fastfer import ops
from fastfer.train import checkpoint as ckpt
from fastfer.train import distributed as dist_utils
from fastfer.train.data import (Augmented, build_splits, describe_counts, eval_loader, make_sampler,
                                make_transforms, sample_seed, targets_of, train_loader)
from fastfer.train.evaluate import (autocast, metrics_from_predictions, predict_loader, report_from_predictions,
                                    write_overlay)
from fastfer.train.optim import EMA, EarlyStopping, LRSchedule, build_optimizer
from fastfer.train.recipes import TrainConfig, stage_configs
from fastfer.train.runtime import (MetricsLog, NonFiniteLossError, TrainForward, amp_dtype, apply_model_updates,
                                   default_run_dir, log_line, pick_device, pick_threads, pick_workers,
                                   set_determinism)

STEP_SEED_TAG = 0x5EED  # keeps the per-step seeds apart from the per-sample seeds


class Trainer:
    """Train ``cfg`` into ``out_dir``; ``resume=True`` continues the run saved there."""

    def __init__(self, cfg: TrainConfig, out_dir: Optional[str | os.PathLike] = None, resume: bool = False,
                 progress: bool = True):
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.out_dir = Path(out_dir) if out_dir is not None else None  # None: runs/<timestamp> of rank 0

    # --- setup ------------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.device)
        self.info = dist_utils.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.threads = pick_threads(cfg.threads, self.device, self.info.world_size)
        torch.set_num_threads(self.threads)
        self.workers = pick_workers(cfg.workers, self.device, self.info.world_size)
        set_determinism(cfg.deterministic, self.device)
        torch.manual_seed(cfg.seed + self.info.rank)
        self.amp = amp_dtype(cfg.amp, self.device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        self.main = self.info.is_main
        if self.out_dir is None:
            self.out_dir = Path(dist_utils.broadcast_object(str(default_run_dir()) if self.main else None))
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_root = self.out_dir / ckpt.CHECKPOINT_DIR
        self.log = MetricsLog(self.out_dir, enabled=self.main, tensorboard=cfg.tensorboard)

    def _build_model(self, num_classes: int, label_names) -> nn.Module:
        from fastfer.models import create_model

        kwargs = dict(self.cfg.model_kwargs)
        if self.cfg.text_encoder:
            kwargs["text_encoder"] = self.cfg.text_encoder
        model = create_model(self.cfg.model, num_classes=num_classes, label_names=list(label_names), **kwargs)
        return model

    def _build_data(self, image_size: int, mean, std) -> None:
        cfg = self.cfg
        self.splits = build_splits(cfg.data, cfg.data_kwargs, cfg.val_fraction, cfg.val_source, image_size, cfg.seed,
                                   workers=self.workers)
        self.mean, self.std, self.image_size = tuple(mean), tuple(std), image_size
        self.train_set = Augmented(self.splits.train, make_transforms(cfg.transform, image_size, mean, std, True))
        test_tf = make_transforms(cfg.transform, image_size, mean, std, False)
        self.val_set = Augmented(self.splits.val, test_tf)
        self.test_set = Augmented(self.splits.test, test_tf)
        eb = cfg.eval_batch_size or 2 * cfg.batch_size
        pin = self.device.type == "cuda"
        self.val_loader = eval_loader(self.val_set, eb, self.workers, self.info.rank, self.info.world_size, pin)
        self.test_loader = eval_loader(self.test_set, eb, self.workers, self.info.rank, self.info.world_size, pin)

    def _metadata(self) -> dict:
        import fastfer

        kwargs = {k: v for k, v in self.cfg.model_kwargs.items() if k not in ("text_encoder", "backend")}
        return dict(model=self.cfg.model, model_kwargs=kwargs, num_classes=len(self.label_names),
                    label_names=list(self.label_names), recipe=self.cfg.recipe, data=self.cfg.data,
                    preprocessing=dict(input_size=[3, self.image_size, self.image_size], mean=list(self.mean),
                                       std=list(self.std), interpolation="bilinear",
                                       alignment=self.splits.alignment, test_transform=self.cfg.transform),
                    fastfer_version=fastfer.__version__)

    # --- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train every stage, evaluate the test split, write the run folder. Returns the summary dict.

        The op backend is pinned to ``cfg.backend`` for the whole run (None: the process's pin, else automatic).
        """
        with ops.use_backend(self.cfg.backend) if self.cfg.backend else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        self._setup()
        cfg, main = self.cfg, self.main
        resume_state = None
        if self.resume:
            folder = ckpt.resolve_checkpoint_dir(self.out_dir)
            weights, meta, resume_state = ckpt.load_checkpoint(folder)
            if resume_state.get("world_size", 1) != self.info.world_size:
                raise ValueError(f"resume: {folder} was saved with {resume_state.get('world_size')} processes, this "
                                 f"run has {self.info.world_size}; exact resume needs the same world size")
        model = self._build_model_for_data()
        self.label_names = tuple(self.splits.label_names)
        if main:
            ckpt.atomic_write_text(self.out_dir / "config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
            log_line(f"run folder {self.out_dir}\n" + self._describe())
        history = list(resume_state["history"]) if resume_state else []
        stages = stage_configs(cfg)
        pos = dict(stage=0, epoch=0, start=0, global_epoch=0, global_step=0, stage_done=False)
        if resume_state:
            pos.update({k: resume_state[k] for k in pos})
        finished = bool(resume_state and resume_state.get("finished"))
        for si, (stage_name, scfg, updates) in enumerate(stages):
            if si < pos["stage"] or finished:
                continue
            apply_model_updates(model, updates)
            if resume_state and si == pos["stage"]:
                model.load_state_dict(weights)
            self._run_stage(model, si, stage_name, scfg, pos, history, resume_state if si == pos["stage"] else None)
            resume_state = None
            pos.update(stage=si + 1, epoch=0, start=0, stage_done=False)
        summary = self._finish(model, history, t_start, finished)
        self.log.close()
        dist_utils.barrier()
        return summary

    def _build_model_for_data(self) -> nn.Module:
        cfg = self.cfg
        # The data comes first (its label names size the classifier); the input size and normalisation come from
        # the model's registered pretrained_cfg, overridden by img_size / --set input_size.
        import timm

        import fastfer.models  # noqa: F401 — registers every fastfer model with timm
        pcfg = timm.models.get_pretrained_cfg(cfg.model)
        if pcfg is None:
            raise ValueError(f"model: {cfg.model!r} is not a registered model (fastfer: apvit, apvit_tiny, "
                             f"fer_former, fer_former_tiny, conv_cut, conv_cut_tiny)")
        pcfg = pcfg.to_dict()
        img_size = cfg.model_kwargs.get("img_size")
        size = cfg.input_size or (img_size if isinstance(img_size, int) else None) or int(pcfg["input_size"][-1])
        mean, std = pcfg.get("mean", (0.485, 0.456, 0.406)), pcfg.get("std", (0.229, 0.224, 0.225))
        if cfg.transform != "light":
            from fastfer.data.transforms import normalization
            mean, std = normalization(cfg.transform)
        self._build_data(size, mean, std)
        model = self._build_model(len(self.splits.label_names), self.splits.label_names)
        if cfg.loss == "fer_former" and cfg.loss_weights.get("text", 1.0) > 0 and not getattr(model, "text_ready", 0):
            raise ValueError("loss: the FER-former text loss needs text features; pass --text-encoder FILE (a "
                             "tensor file with 'text_embed' [C, 512], or open_clip:PATH to a local CLIP "
                             "ViT-B/32) or train the label head only with --set loss_weights.text=0")
        if not self.resume:
            self._init_weights(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _init_weights(self, model: nn.Module) -> None:
        """Load each ``init_weights`` file (a partial fastfer state_dict) into the fresh model."""
        from fastfer.models.weights import load_partial

        for path in self.cfg.init_weights:
            left = load_partial(model, path)
            if self.main:
                total = len(model.state_dict())
                log_line(f"init: {total - len(left)} of {total} tensors from {path}; {len(left)} keep their "
                         f"initialisation")

    def _describe(self) -> str:
        cfg, s = self.cfg, self.splits
        ops_backend = cfg.backend or "auto"
        lines = [
            f"model {cfg.model} {cfg.model_kwargs or ''} | recipe {cfg.recipe} | data {cfg.data} | "
            f"input {self.image_size}² | classes {', '.join(self.label_names)}",
            f"train {len(s.train)} ({describe_counts(targets_of(s.train), self.label_names)}); val {len(s.val)} "
            f"({s.val_from}); test {len(s.test)} ({s.test_from})",
            f"device {self.device} | threads {self.threads} | workers {self.workers} | processes "
            f"{self.info.world_size} | amp {self.amp or 'off'} | compile {cfg.compile} | channels_last "
            f"{self.channels_last} | op backend {ops_backend} | seed {cfg.seed}",
        ]
        if hasattr(os, "getloadavg"):
            lines[-1] += f" | load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        return "\n".join(lines)

    # --- one stage ----------------------------------------------------------------------------------------------
    def _run_stage(self, model: nn.Module, si: int, name: str, cfg: TrainConfig, pos: dict, history: list,
                   state: Optional[dict]) -> None:
        main, info = self.main, self.info
        kind = "fer_former" if cfg.loss == "fer_former" and cfg.loss_weights.get("text", 1.0) > 0 else "logits"
        adapter = TrainForward(model, kind, cfg.aux_trunk_module if cfg.aux_trunk_weight > 0 else None,
                               len(self.label_names))
        self._adapter = adapter
        fwd = dist_utils.wrap(adapter, info, self.device, sync_bn=cfg.sync_bn and self.device.type == "cuda")
        if cfg.compile:
            if cfg.deterministic:
                torch.use_deterministic_algorithms(True)  # also sets inductor's deterministic flag
            fwd = torch.compile(fwd)
        opt = build_optimizer(model, cfg, extra=adapter.aux_head)
        sampler = make_sampler(cfg.sampler, targets_of(self.splits.train), cfg.seed, info.rank, info.world_size,
                               cfg.oversample_thr, cfg.oversample_method)
        loader = train_loader(self.train_set, sampler, cfg.batch_size, self.workers, self.device.type == "cuda")
        micro_per_epoch = sampler.num_samples // cfg.batch_size
        steps_per_epoch = micro_per_epoch // cfg.accum_steps
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"batch_size: {cfg.batch_size} × accum_steps {cfg.accum_steps} exceeds the "
                             f"{sampler.num_samples} training samples per process; lower --batch-size")
        sched = LRSchedule(opt, cfg, steps_per_epoch, epoch_offset=pos["global_epoch"])
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        ema = EMA(model, cfg.ema) if cfg.ema else None
        stopper = EarlyStopping(**cfg.early_stopping) if cfg.early_stopping else None
        best = EarlyStopping(cfg.select_best, patience=10**9, restore_best=True) if cfg.select_best else None
        class_w = self._class_weights(cfg)
        criterion = self._criterion(cfg)
        step_in_stage = pos["epoch"] * steps_per_epoch + pos["start"] // (cfg.batch_size * cfg.accum_steps)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            if adapter.aux_head is not None and state.get("aux_head") is not None:
                adapter.aux_head.load_state_dict(state["aux_head"])
            for obj, key in ((stopper, "early_stopping"), (best, "select_best")):
                if obj is not None and state.get(key):
                    obj.load_state_dict(state[key])
            step_in_stage = state["step_in_stage"]
        epoch0, start0 = pos["epoch"], pos["start"]
        if pos.get("stage_done"):
            epoch0 = cfg.epochs

        def save(epoch: int, start: int, stage_done: bool = False, finished: bool = False) -> None:
            bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
            if bad:  # never let a broken model replace the last good checkpoint
                raise NonFiniteLossError(
                    f"weights became non-finite ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}) by optimizer "
                    f"step {pos['global_step']}; training stopped. The last good checkpoint is "
                    f"{self._latest_checkpoint()}")
            partial = dist_utils.all_reduce_sum(sums.clone()) if start else None  # metrics of the epoch so far
            state_out = dict(stage=si, epoch=epoch, start=start, epoch_sums=partial,
                             epoch_elapsed=time.perf_counter() - t0 if start else 0.0, global_epoch=pos["global_epoch"],
                             global_step=pos["global_step"], step_in_stage=step_in_stage, stage_done=stage_done,
                             finished=finished, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                             scaler=scaler.state_dict() if scaler.is_enabled() else None,
                             ema=ema.state_dict() if ema else None,
                             aux_head=adapter.aux_head.state_dict() if adapter.aux_head is not None else None,
                             early_stopping=stopper.state_dict() if stopper else None,
                             select_best=best.state_dict() if best else None, history=history,
                             rng=ckpt.rng_state(), world_size=info.world_size, config=self.cfg.to_json())
            if main:
                ckpt.save_checkpoint(self.ckpt_root, pos["global_step"], model.state_dict(), self._metadata(),
                                     state_out, keep=self.cfg.keep_checkpoints)
            dist_utils.barrier()

        self._save_stage = save
        bar = self._bar(total=cfg.epochs, initial=epoch0, desc=f"{name} epochs", position=0)
        for epoch in range(epoch0, cfg.epochs):
            start = start0 if epoch == epoch0 else 0
            sampler.set_epoch(pos["global_epoch"], start)
            model.train()
            t0 = time.perf_counter()
            done = start // (cfg.batch_size * cfg.accum_steps)
            sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n over this epoch's steps (this rank)
            if start and state is not None and state.get("epoch_sums") is not None:
                if main:  # the saved sums are over all ranks: count them once
                    sums += state["epoch_sums"]
                t0 -= state.get("epoch_elapsed", 0.0)
            sbar = self._bar(total=steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                             position=1, leave=False)
            it = iter(loader)
            t_win, n_win = time.perf_counter(), 0
            for step in range(done, steps_per_epoch):
                lr = sched.set_for_step(step_in_stage)
                torch.manual_seed(sample_seed(self.cfg.seed, STEP_SEED_TAG, info.rank, pos["global_step"]))
                loss_v, correct, n = self._train_step(fwd, opt, scaler, it, cfg, kind, criterion, class_w,
                                                      pos["global_step"], epoch, step)
                if ema is not None:
                    ema.update(model)
                step_in_stage += 1
                pos["global_step"] += 1
                sums += torch.tensor([loss_v * n, correct, n], dtype=torch.float64)
                n_win += n
                if sbar is not None and (step + 1) % max(self.cfg.log_every, 1) == 0:
                    dt = time.perf_counter() - t_win
                    sbar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.3f}", acc=f"{sums[1] / max(sums[2], 1):.3f}",
                                     lr=f"{lr:.2e}", img_s=f"{n_win * info.world_size / max(dt, 1e-9):.0f}")
                    t_win, n_win = time.perf_counter(), 0
                if sbar is not None:
                    sbar.update(1)
                if self.cfg.save_every_steps and pos["global_step"] % self.cfg.save_every_steps == 0 \
                        and step + 1 < steps_per_epoch:
                    save(epoch, (step + 1) * cfg.batch_size * cfg.accum_steps)
            del it
            if sbar is not None:
                sbar.close()
            dist_utils.all_reduce_sum(sums)
            elapsed = time.perf_counter() - t0
            row = self._epoch_row(name, epoch, pos, sched, sums, elapsed, model, ema)
            history.append(row)
            pos["global_epoch"] += 1
            sched.epoch_end(row)
            stop = stopper.update(epoch, row, model) if stopper else False
            if best is not None:
                best.update(epoch, row, ema.module if ema else model)
            self.log.write(history)
            if main:
                log_line(_format_row(row, cfg.epochs), bar)
            if bar is not None:
                bar.update(1)
            last = stop or epoch + 1 == cfg.epochs
            if last:
                restore = best if best is not None else (stopper if stopper and stopper.restore_best else None)
                if restore is not None and restore.best_state is not None:
                    target = ema.module if ema and restore is best else model
                    target.load_state_dict(restore.best_state)
                    if main:
                        log_line(f"{name}: restored the weights of epoch {restore.best_epoch + 1} "
                                 f"({restore.monitor} {restore.best:.4f})", bar)
            if ema is not None and last:
                model.load_state_dict(ema.state_dict())  # the final weights of a stage are the EMA weights
            save(epoch + 1, 0, stage_done=last)
            if stop:
                if main:
                    log_line(f"{name}: early stop after epoch {epoch + 1} ({stopper.monitor} did not improve by "
                             f"{stopper.min_delta} for {stopper.patience} epochs)", bar)
                break
        if bar is not None:
            bar.close()
        adapter.close()

    def _train_step(self, fwd, opt, scaler, it, cfg: TrainConfig, kind: str, criterion, class_w, global_step: int,
                    epoch: int, step: int) -> tuple[float, float, int]:
        """One optimizer step over ``accum_steps`` micro-batches; returns (mean loss, correct, samples)."""
        total_loss, correct, n = 0.0, 0.0, 0
        for micro in range(cfg.accum_steps):
            x, y = next(it)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            sync = micro == cfg.accum_steps - 1 or not hasattr(fwd, "no_sync")
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                with autocast(self.device, self.amp):
                    out = fwd(x)
                    loss, logits = self._loss(out, y, kind, criterion, class_w, cfg)
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at optimizer step {global_step + 1} (epoch {epoch + 1}, batch "
                        f"{step + 1}, micro-batch {micro + 1}/{cfg.accum_steps}); training stopped. The last good "
                        f"checkpoint is {self._latest_checkpoint()}")
                scaler.scale(loss / cfg.accum_steps).backward()
            total_loss += float(loss.detach()) * len(y)
            hard = y.argmax(1) if y.is_floating_point() else y  # soft targets (FERPlus probability modes)
            correct += float((logits.detach().argmax(1) == hard).sum())
            n += len(y)
        if cfg.grad_clip:
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if not scaler.is_enabled() and not bool(torch.isfinite(norm)):
                raise NonFiniteLossError(
                    f"gradient norm is {float(norm)} at optimizer step {global_step + 1} (epoch {epoch + 1}); "
                    f"training stopped. The last good checkpoint is {self._latest_checkpoint()}")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return total_loss / max(n, 1), correct, n

    def _latest_checkpoint(self) -> str:
        name = ckpt.read_latest(self.ckpt_root)
        return str(self.ckpt_root / name) if name else "none (no checkpoint was written yet)"

    def _criterion(self, cfg: TrainConfig):
        if cfg.loss == "fer_former":
            from fastfer.models.fer_former import FerFormerLoss

            return FerFormerLoss(cfg.loss_weights.get("cls", 1.0), cfg.loss_weights.get("text", 1.0),
                                 cfg.text_loss, cfg.label_smoothing)
        return None

    def _class_weights(self, cfg: TrainConfig) -> Optional[torch.Tensor]:
        """Keras/sklearn 'balanced' weights n / (K · n_c) for ``ce_balanced``."""
        if cfg.loss != "ce_balanced":
            return None
        t = torch.tensor(targets_of(self.splits.train))
        counts = torch.bincount(t, minlength=len(self.label_names)).double()
        present = (counts > 0).sum()
        w = torch.where(counts > 0, len(t) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
        return w.float().to(self.device)

    def _loss(self, out, y, kind: str, criterion, class_w, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        if kind == "fer_former":
            from fastfer.models.fer_former import FerFormerOutput

            o = FerFormerOutput(*out)
            return criterion(o, y).loss, o.logits
        aux = None
        if isinstance(out, tuple):  # (logits, trunk logits) with deep supervision of the trunk
            out, aux = out
        if class_w is not None:
            per = F.cross_entropy(out.float(), y, reduction="none", label_smoothing=cfg.label_smoothing)
            w = y.float() @ class_w if y.is_floating_point() else class_w[y]  # soft targets: expected weight
            loss = (per * w).mean()  # Keras: weighted per sample, mean over the batch
        else:
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        if aux is not None:
            loss = loss + cfg.aux_trunk_weight * F.cross_entropy(aux.float(), y)
        return loss, out

    def _epoch_row(self, stage: str, epoch: int, pos: dict, sched, sums, elapsed: float, model, ema) -> dict:
        n = max(float(sums[2]), 1.0)
        row = dict(stage=stage, epoch=epoch + 1, global_epoch=pos["global_epoch"] + 1, step=pos["global_step"],
                   lr=sched.opt.param_groups[0]["lr"], train_loss=float(sums[0]) / n,
                   train_accuracy=float(sums[1]) / n, images_per_s=float(sums[2]) / max(elapsed, 1e-9),
                   epoch_time_s=elapsed)
        pred = predict_loader(ema.module if ema else model, self.val_loader, self.device, self.amp, self.channels_last)
        row.update(metrics_from_predictions(pred, len(self.label_names), "val"))
        return row

    def _bar(self, **kwargs):
        if not (self.main and self.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(dynamic_ncols=True, **kwargs)

    # --- the end of the run -------------------------------------------------------------------------------------
    def _finish(self, model: nn.Module, history: list, t_start: float, already_finished: bool) -> dict:
        cfg = self.cfg
        if not already_finished and hasattr(self, "_save_stage"):
            self._save_stage(epoch=0, start=0, stage_done=True, finished=True)
        t_test = time.perf_counter()
        pred = predict_loader(model, self.test_loader, self.device, self.amp, self.channels_last)
        report = report_from_predictions(pred, self.label_names)
        summary = dict(test=dict(accuracy=report["accuracy"], mean_class_accuracy=report["mean_class_accuracy"],
                                 macro_f1=report["macro_f1"], n=report["n"]),
                       epochs=len(history), steps=history[-1]["step"] if history else 0,
                       train_time_s=sum(r["epoch_time_s"] for r in history),
                       device=str(self.device), threads=self.threads, processes=self.info.world_size)
        if self.main:
            from fastfer.train.metrics import format_report, write_report

            paths = write_report(report, self.out_dir, "test", png=True,
                                 title=f"{cfg.model} on {cfg.data} test — accuracy {report['accuracy']:.1%}")
            overlay = write_overlay(model, self.val_set, cfg.overlay_images, self.out_dir / "app_overlay.png",
                                    self.mean, self.std, self.device, self.label_names)
            meta = {**self._metadata(), "epoch": len(history), "step": summary["steps"], "metrics": summary["test"]}
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


def _format_row(row: dict, epochs: int) -> str:
    extra = "".join(f" {k[4:]} {row[k]:.3f}" for k in ("val_text_accuracy", "val_fused_accuracy") if k in row)
    return (f"[{row['stage']}] epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.3f} acc "
            f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f} mca "
            f"{row['val_mean_class_accuracy']:.3f} F1 {row['val_macro_f1']:.3f}{extra} | lr {row['lr']:.2e} | "
            f"{row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.0f} s")
