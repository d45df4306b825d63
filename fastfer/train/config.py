"""The training configuration: nested dataclasses, one merge path (recipes, stages, resume and the command line
all go through :func:`merge`), and every field validated in one place with its allowed range.

Sections: ``model`` (what to build), ``data`` (what to read and how to split), ``optim`` (optimizer), ``schedule``
(length, batch, learning rate over time, stopping), ``loss``, ``runtime`` (device, precision, threads, saving,
logging). A run's ``config.json`` is :meth:`TrainConfig.to_json`.

Overrides are nested dicts (``{"optim": {"lr": 0.01}}``, from ``--set optim.lr=0.01``) or use the short names of
:data:`ALIASES` (``lr``, ``model_kwargs``, ``data_kwargs``, ``loss_weights``, ``optimizer``, …), which the recipes
and the command line use. A dict given whole (:class:`Replace`, ``--set data_kwargs={...}``) replaces the value;
dotted keys merge into it. Unknown keys are refused with the valid ones listed.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from fastfer.utils.errors import FastferError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "constant", "inverse_time", "plateau")
LOSSES = ("ce", "ce_balanced", "fer_former")
SAMPLERS = ("shuffle", "class_balanced")
AMP_MODES = ("auto", "bf16", "fp16", "off")
TRANSFORMS = ("apvit", "fer_former", "conv_cut", "light")


class ConfigError(FastferError, ValueError):
    """A configuration value that is unknown, of the wrong type or out of range; names the field."""


@dataclass
class ModelConfig:
    name: str = "apvit_tiny"  # a registered fastfer model
    kwargs: dict = field(default_factory=dict)  # constructor arguments (model_kwargs)
    init_weights: list = field(default_factory=list)  # partial fastfer safetensors loaded before training
    text_encoder: Optional[str] = None  # FER-former: tensor file or "open_clip:PATH"; builds text_embed once


@dataclass
class DataConfig:
    spec: str = "synthetic"  # "synthetic" or NAME:PATH
    kwargs: dict = field(default_factory=dict)  # reader options (data_kwargs)
    labels: Optional[list] = None  # own class names (folder datasets); None: the dataset's
    val_fraction: float = 0.1  # held out of train when the dataset has no validation split
    val_source: str = "auto"  # "auto" (native val split, else held-out train) or "test" (the papers' protocol)
    transform: str = "apvit"  # fastfer.data.build_transforms recipe, or "light" (crop + flip only)
    input_size: Optional[int] = None  # None: the model's
    sampler: str = "class_balanced"
    oversample_thr: float = 0.15
    oversample_method: str = "sqrt"


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    no_decay: bool = False  # exempt model.no_weight_decay() keys and 1-D parameters from weight decay
    grad_clip: Optional[float] = 10.0  # global L2 norm; None = off


@dataclass
class ScheduleConfig:
    epochs: int = 40
    batch_size: int = 128  # per process: the global batch is batch_size × world_size × accum_steps
    eval_batch_size: Optional[int] = None  # None: 2 × batch_size
    accum_steps: int = 1
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke runs); None: the whole epoch
    name: str = "cosine"
    by: str = "epoch"  # "epoch" (mmcv by_epoch) or "step" (continuous)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_size: int = 30  # StepLR epochs
    gamma: float = 0.1
    decay_epochs: float = 80.0  # inverse_time: lr / (1 + epoch / decay_epochs)
    plateau: dict = field(default_factory=lambda: dict(factor=0.1, patience=2, threshold=0.003, min_lr=1e-6))
    early_stopping: Optional[dict] = None  # dict(monitor=..., patience=..., min_delta=..., restore_best=...)
    select_best: Optional[str] = None  # keep the weights of the best epoch by this metric
    ema: Optional[float] = None  # EMA decay per optimizer step; evaluation then uses the EMA weights


@dataclass
class LossConfig:
    name: str = "ce"
    label_smoothing: float = 0.0
    weights: dict = field(default_factory=lambda: dict(cls=1.0, text=1.0))  # fer_former heads
    text_loss: str = "ce"  # fer_former: "ce" (released) or "infonce"
    # Deep supervision of the CNN trunk (training only, never saved): + weight · CE of a linear classifier on the
    # flattened output map of model.<aux_trunk_module>. 0 = off (every paper recipe).
    aux_trunk_weight: float = 0.0
    aux_trunk_module: str = "extractor"


@dataclass
class RuntimeConfig:
    amp: str = "auto"
    compile: bool = False
    channels_last: Optional[bool] = None  # None: on (CPU and CUDA: oneDNN / cuDNN convolutions are faster that way)
    seed: int = 25235
    deterministic: bool = False
    backend: Optional[str] = None  # op backend pinned for the run; None = automatic
    device: str = "auto"
    threads: Optional[int] = None  # CPU intra-op threads; None = automatic
    workers: Optional[int] = None  # DataLoader workers; None = automatic
    sync_bn: bool = False  # under DDP on CUDA only
    save_every_steps: Optional[int] = None  # also checkpoint every N optimizer steps (None: epoch ends only)
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = False
    overlay_images: int = 6  # APP/ATP overlay of this many validation faces (APViT models); 0 = none
    collective_timeout_s: float = 300.0  # DDP: how long a collective waits for the other ranks
    stall_timeout_s: Optional[float] = 120.0  # DDP: end the job when a rank's heartbeat stops this long; None = off


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
                             "schedule": ScheduleConfig, "loss": LossConfig, "runtime": RuntimeConfig}


@dataclass
class TrainConfig:
    """Everything a training run needs; a run's ``config.json`` is this, resolved."""

    recipe: str = "synthetic"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stages: Optional[list] = None  # multi-stage recipes: overrides per stage (+ "name", "model_updates")
    overrides: dict = field(default_factory=dict)  # what the user set explicitly (applied to every stage too)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --- short names -------------------------------------------------------------------------------------------------

_RENAMES = {"model_kwargs": ("model", "kwargs"), "init_weights": ("model", "init_weights"),
            "text_encoder": ("model", "text_encoder"), "data_kwargs": ("data", "kwargs"),
            "optimizer": ("optim", "name"), "scheduler": ("schedule", "name"), "sched_by": ("schedule", "by"),
            "loss_weights": ("loss", "weights")}
_SECTION_STRINGS = {"model": "name", "data": "spec", "loss": "name"}  # `model=apvit` means model.name
_UNCLEAR = {"by", "spec", "weights"}  # field names too vague alone: sched_by, data, loss_weights instead


def _aliases() -> dict[str, tuple[str, str]]:
    names: dict[str, list] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            names.setdefault(f.name, []).append((section, f.name))
    out = {k: v[0] for k, v in names.items() if len(v) == 1 and k not in SECTIONS and k not in _UNCLEAR}
    out.update(_RENAMES)
    return out


#: short name → (section, field): every field whose name is unique across sections, plus the renames above.
ALIASES: dict[str, tuple[str, str]] = _aliases()


def valid_keys() -> list[str]:
    """Every key an override may use (top level, sections, short names)."""
    return sorted({"recipe", "stages", *SECTIONS, *ALIASES})


class Replace(dict):
    """A dict value given whole (``--set data_kwargs={...}``): it replaces the current dict instead of merging."""


def parse_value(text: str) -> Any:
    """``--set key=value`` value: a Python/JSON literal (numbers, true/false/null, lists, dicts) or a string."""
    lowered = text.strip()
    mapping = {"true": True, "false": False, "null": None, "none": None, "nan": math.nan, "inf": math.inf,
               "-inf": -math.inf}
    if lowered.lower() in mapping:
        return mapping[lowered.lower()]
    try:
        value = ast.literal_eval(lowered)
        return Replace(value) if isinstance(value, dict) else value
    except (ValueError, SyntaxError):
        try:
            return json.loads(lowered)
        except json.JSONDecodeError:
            return text


def parse_assignments(items: list[str]) -> dict:
    """``["lr=0.01", "model_kwargs.depth=2"]`` → nested override dict (dots descend into dicts)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set: expected KEY=VALUE with a non-empty key, got {item!r}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} was already given a value, cannot descend into it")
        node[parts[-1]] = parse_value(value)
    return out


def _merge_dict(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, Replace):
            out[k] = copy.deepcopy(dict(v))
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_dict(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def canonical(overrides: dict, where: str = "config") -> dict:
    """Overrides in nested form: short names and section strings resolved; unknown keys refused."""
    out: dict = {}
    for key, value in (overrides or {}).items():
        if key in ("recipe", "stages", "overrides"):
            out[key] = value
        elif key in SECTIONS and isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(SECTIONS[key])}
            bad = sorted(set(value) - known)
            if bad:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{key}.{b}' for b in bad)}; "
                                  f"{key} has {', '.join(sorted(known))}")
            out[key] = {**out.get(key, {}), **value}  # shallow: a Replace value inside stays a Replace
        elif key in _SECTION_STRINGS:
            out.setdefault(key, {})[_SECTION_STRINGS[key]] = value
        elif key in ALIASES:
            section, name = ALIASES[key]
            out.setdefault(section, {})
            if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out[section].get(name), dict):
                out[section][name] = _merge_dict(out[section][name], value)
            else:
                out[section][name] = value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid_keys())}")
    return out


def merge(values: dict, overrides: dict, where: str = "config") -> dict:
    """Nested ``values`` (a :meth:`TrainConfig.to_json`-like dict) ← ``overrides`` (any accepted form). The one
    merge path of recipes, stages, resume and the command line."""
    return _merge_dict(values, canonical(overrides, where))


def from_dict(values: dict) -> TrainConfig:
    """A :class:`TrainConfig` from nested values (defaults fill what is missing), validated."""
    values = merge(default_values(), values, "config")
    sections = {name: SECTIONS[name](**values.get(name, {})) for name in SECTIONS}
    sections["optim"].betas = tuple(sections["optim"].betas)
    cfg = TrainConfig(recipe=values.get("recipe", "synthetic"), stages=values.get("stages"),
                      overrides=values.get("overrides") or {}, **sections)
    validate(cfg)
    return cfg


def default_values() -> dict:
    return TrainConfig().to_json()


# --- validation --------------------------------------------------------------------------------------------------

def _fail(name: str, expected: str, value: Any) -> None:
    raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        _fail(name, f"one of {', '.join(map(str, options))}", value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
            high_open: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = _is_number(value) and (value > low if low_open else value >= low) and (value < high if high_open
                                                                                else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f"a finite number in {lo}{low}, {high}{hi}" if high != math.inf else (
            f"a finite number {'>' if low_open else '≥'} {low}")
        _fail(name, rng + (" or null" if optional else ""), value)


def _integer(name: str, value: Any, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, f"an int ≥ {low}" + (" or null (unset)" if optional else ""), value)


def _flag(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        _fail(name, "true or false" + (" or null" if optional else ""), value)


def validate(cfg: TrainConfig) -> None:
    """Check every field; errors name the field, the expected and the actual value."""
    from fastfer.train.data import parse_data_spec

    if not isinstance(cfg.recipe, str):
        _fail("recipe", "a recipe name", cfg.recipe)
    _validate_model(cfg.model)
    d = cfg.data
    try:
        parse_data_spec(d.spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(d.kwargs, dict):
        _fail("data.kwargs", "a dict of reader options", d.kwargs)
    if d.labels is not None and (not isinstance(d.labels, (list, tuple)) or len(d.labels) < 2
                                 or not all(isinstance(n, str) and n for n in d.labels)
                                 or len(set(d.labels)) != len(d.labels)):
        _fail("data.labels", "a list of ≥ 2 distinct class names", d.labels)
    _number("data.val_fraction", d.val_fraction, 0, 1, low_open=True, high_open=True)
    _choice("data.val_source", d.val_source, ("auto", "test"))
    if d.transform != "light":
        from fastfer.data.transforms import recipe_name

        try:
            recipe_name(d.transform)
        except ValueError:
            _fail("data.transform", f"one of {', '.join(TRANSFORMS)}", d.transform)
    _integer("data.input_size", d.input_size, 8, optional=True)
    _choice("data.sampler", d.sampler, SAMPLERS)
    _number("data.oversample_thr", d.oversample_thr, 0, 1)
    _choice("data.oversample_method", d.oversample_method, ("sqrt", "reciprocal"))
    o = cfg.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _number("optim.lr", o.lr, 0, low_open=True)
    _number("optim.momentum", o.momentum, 0, 1, high_open=True)
    _flag("optim.nesterov", o.nesterov)
    if not (isinstance(o.betas, (list, tuple)) and len(o.betas) == 2 and all(_is_number(b) and 0 <= b < 1
                                                                             for b in o.betas)):
        _fail("optim.betas", "two numbers in [0, 1)", o.betas)
    _number("optim.eps", o.eps, 0, low_open=True)
    _number("optim.weight_decay", o.weight_decay, 0)
    _flag("optim.no_decay", o.no_decay)
    _number("optim.grad_clip", o.grad_clip, 0, low_open=True, optional=True)
    _validate_schedule(cfg.schedule, o.lr)
    lo = cfg.loss
    _choice("loss.name", lo.name, LOSSES)
    _number("loss.label_smoothing", lo.label_smoothing, 0, 1, high_open=True)
    if not isinstance(lo.weights, dict) or not all(_is_number(v) and v >= 0 for v in lo.weights.values()) \
            or set(lo.weights) - {"cls", "text"}:
        _fail("loss.weights", "a dict with cls / text weights ≥ 0", lo.weights)
    _choice("loss.text_loss", lo.text_loss, ("ce", "infonce"))
    _number("loss.aux_trunk_weight", lo.aux_trunk_weight, 0)
    _validate_runtime(cfg.runtime)
    for i, stage in enumerate(cfg.stages or []):
        if not isinstance(stage, dict):
            _fail(f"stages[{i}]", "a dict of overrides", stage)
        canonical({k: v for k, v in stage.items() if k not in ("name", "model_updates")}, f"stages[{i}]")


def _validate_model(m: ModelConfig) -> None:
    from fastfer.train.recipes import model_class

    cls = model_class(m.name)  # refuses non-fastfer models with the list
    if not isinstance(m.kwargs, dict):
        _fail("model.kwargs", "a dict of constructor arguments", m.kwargs)
    import inspect

    params = inspect.signature(cls.__init__).parameters
    accepted = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(m.kwargs) - accepted - {"num_classes", "label_names"})
    if unknown:
        raise ConfigError(f"model.kwargs: {m.name} takes no argument(s) {', '.join(unknown)}; it takes "
                          f"{', '.join(sorted(accepted))}")
    if not isinstance(m.init_weights, (list, tuple)) or not all(isinstance(p, str) for p in m.init_weights):
        _fail("model.init_weights", "a list of file paths", m.init_weights)
    if m.text_encoder is not None and not isinstance(m.text_encoder, str):
        _fail("model.text_encoder", "a path or open_clip:PATH", m.text_encoder)


def _validate_schedule(s: ScheduleConfig, lr: float) -> None:
    _integer("schedule.epochs", s.epochs, 0)
    _integer("schedule.batch_size", s.batch_size, 1)
    _integer("schedule.eval_batch_size", s.eval_batch_size, 1, optional=True)
    _integer("schedule.accum_steps", s.accum_steps, 1)
    _integer("schedule.max_steps_per_epoch", s.max_steps_per_epoch, 1, optional=True)
    _choice("schedule.name", s.name, SCHEDULERS)
    _choice("schedule.by", s.by, ("epoch", "step"))
    _number("schedule.warmup_epochs", s.warmup_epochs, 0)
    _number("schedule.min_lr", s.min_lr, 0)
    if _is_number(lr) and s.min_lr > lr:
        raise ConfigError(f"schedule.min_lr: expected ≤ optim.lr ({lr}), got {s.min_lr!r}")
    _integer("schedule.step_size", s.step_size, 1)
    _number("schedule.gamma", s.gamma, 0, low_open=True)
    _number("schedule.decay_epochs", s.decay_epochs, 0, low_open=True)
    if not isinstance(s.plateau, dict):
        _fail("schedule.plateau", "a dict (factor, patience, threshold, min_lr)", s.plateau)
    unknown = set(s.plateau) - {"factor", "patience", "threshold", "min_lr"}
    if unknown:
        _fail("schedule.plateau", "keys factor, patience, threshold, min_lr", sorted(unknown))
    if s.early_stopping is not None:
        es = s.early_stopping
        if not isinstance(es, dict) or set(es) - {"monitor", "patience", "min_delta", "restore_best"}:
            _fail("schedule.early_stopping", "null or a dict (monitor, patience, min_delta, restore_best)", es)
        _integer("schedule.early_stopping.patience", es.get("patience", 5), 1)
        _number("schedule.early_stopping.min_delta", es.get("min_delta", 0.0), 0)
    if s.select_best is not None and not isinstance(s.select_best, str):
        _fail("schedule.select_best", "null or a metric name such as val_accuracy", s.select_best)
    _number("schedule.ema", s.ema, 0, 1, low_open=True, high_open=True, optional=True)


def _validate_runtime(r: RuntimeConfig) -> None:
    _choice("runtime.amp", r.amp, AMP_MODES)
    _flag("runtime.compile", r.compile)
    _flag("runtime.channels_last", r.channels_last, optional=True)
    _integer("runtime.seed", r.seed, 0)
    _flag("runtime.deterministic", r.deterministic)
    if r.backend is not None:
        from fastfer import ops

        try:
            ops.check_backend(r.backend)
        except ValueError as exc:
            raise ConfigError(f"runtime.backend: {exc}") from None
    if not isinstance(r.device, str):
        _fail("runtime.device", "auto, cpu, cuda or cuda:N", r.device)
    _integer("runtime.threads", r.threads, 1, optional=True)
    _integer("runtime.workers", r.workers, 0, optional=True)
    _flag("runtime.sync_bn", r.sync_bn)
    _integer("runtime.save_every_steps", r.save_every_steps, 1, optional=True)
    _integer("runtime.keep_checkpoints", r.keep_checkpoints, 1)
    _integer("runtime.log_every", r.log_every, 1)
    _flag("runtime.tensorboard", r.tensorboard)
    _integer("runtime.overlay_images", r.overlay_images, 0)
    _number("runtime.collective_timeout_s", r.collective_timeout_s, 1)
    _number("runtime.stall_timeout_s", r.stall_timeout_s, 1, optional=True)
