"""Training recipes: one resolved :class:`TrainConfig` per paper (and a fast demo), every field overridable.

| recipe | model | what it reproduces |
|---|---|---|
| ``apvit`` | ``apvit`` | apvit.md §8: SGD 1e-3 / momentum 0.9 / wd 5e-4 on every parameter, cosine to 0 by epoch, 40 epochs, batch 128, grad clip 10, plain CE, class-balanced repeat sampler (thr 0.15, sqrt), SyncBN under DDP, seed 25235 |
| ``fer_former`` | ``fer_former`` | ferformer.md §10 + D5–D8: SGD 1e-4 / momentum 0.9 / wd 0, StepLR(30, 0.1) (never fires in 30 epochs), batch 16, loss CE(label) + CE(100·cos text), 10 % of train held out for validation, last epoch kept; logs label-head (official), text-head and fused accuracy |
| ``conv_cut`` | ``conv_cut`` | convcut.md §6: stage 1 "train-head" (Adam 1e-3, clipnorm 3, ReduceLROnPlateau, early stopping on val acc, balanced class weights, dropout 0.1, LN after the DET) then stage 2 "finetune-backbone" (Adam 1e-5 / (1 + epoch/80), early stopping on train acc, best val acc kept, dropout 0.2, no LN) with the Keras → PyTorch equivalences of §6.1 |
| ``synthetic`` | ``apvit_tiny`` | the demo: the small APViT on the built-in synthetic set, sized to finish in minutes on a 2-core CPU |

Choices the papers leave open are fields with the recipe's value spelled out, so a run's ``config.json`` says what
was used. ``batch_size`` is per process: the global batch is ``batch_size × world_size × accum_steps``.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "constant", "inverse_time", "plateau")
LOSSES = ("ce", "ce_balanced", "fer_former")
SAMPLERS = ("shuffle", "class_balanced")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``config.json`` of a run is this, resolved."""

    recipe: str = "synthetic"
    model: str = "apvit_tiny"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "synthetic"
    data_kwargs: dict = field(default_factory=dict)  # e.g. synthetic sizes, reader options
    val_fraction: float = 0.1  # held out of train when the dataset has no validation split (D7)
    val_source: str = "auto"  # "auto" (native val split, else held-out train) or "test" (the papers' protocol)
    transform: str = "apvit"  # fastfer.data.build_transforms recipe, or "light" (crop + flip only)
    input_size: Optional[int] = None  # None: the model's input size
    epochs: int = 40
    batch_size: int = 128
    eval_batch_size: Optional[int] = None
    accum_steps: int = 1
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke tests)
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    no_decay: bool = False  # exempt model.no_weight_decay() keys and 1-D parameters (norms, biases) from wd
    scheduler: str = "cosine"
    sched_by: str = "epoch"  # "epoch" (mmcv by_epoch) or "step" (continuous)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_size: int = 30  # StepLR epochs
    gamma: float = 0.1
    decay_epochs: float = 80.0  # inverse_time: lr / (1 + epoch / decay_epochs)
    plateau: dict = field(default_factory=lambda: dict(factor=0.1, patience=2, threshold=0.003, min_lr=1e-6))
    grad_clip: Optional[float] = 10.0  # global L2 norm; None = off
    loss: str = "ce"
    label_smoothing: float = 0.0
    loss_weights: dict = field(default_factory=lambda: dict(cls=1.0, text=1.0))  # fer_former
    # Deep supervision of the CNN trunk (training only, not part of the saved model): + weight · CE of a linear
    # classifier on the flattened output map of model.<aux_trunk_module>. 0 = off (every paper recipe).
    aux_trunk_weight: float = 0.0
    aux_trunk_module: str = "extractor"
    text_loss: str = "ce"  # fer_former: "ce" (released) or "infonce"
    sampler: str = "class_balanced"
    oversample_thr: float = 0.15
    oversample_method: str = "sqrt"
    early_stopping: Optional[dict] = None  # dict(monitor="val_accuracy", patience=5, min_delta=0.003, restore_best=True)
    select_best: Optional[str] = None  # keep the weights of the best epoch by this metric (e.g. "val_accuracy")
    stages: Optional[list] = None  # multi-stage recipes: list of dicts of overrides (+ "name", "model_updates")
    amp: str = "auto"
    compile: bool = False
    channels_last: Optional[bool] = None  # None: on for CUDA, off for CPU
    ema: Optional[float] = None  # EMA decay per optimizer step; evaluation then uses the EMA weights
    seed: int = 25235
    deterministic: bool = False
    backend: Optional[str] = None  # op backend; None = automatic
    device: str = "auto"
    threads: Optional[int] = None  # CPU intra-op threads; None = automatic (see engine.pick_threads)
    workers: Optional[int] = None  # DataLoader workers; None = automatic
    sync_bn: bool = False  # under DDP on CUDA only
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = False
    overlay_images: int = 6  # APP/ATP overlay of this many validation faces (APViT models); 0 = none
    text_encoder: Optional[str] = None  # fer_former: tensor file or "open_clip:PATH", builds text_embed once
    init_weights: list = field(default_factory=list)  # partial fastfer safetensors loaded before training (e.g.
    # the converted IR-50 and ViT-S parts: `fastfer convert --from ir50-evolve ...`); ignored on resume
    overrides: dict = field(default_factory=dict)  # what the user set explicitly (also applied to every stage)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _synthetic_recipe() -> dict:
    """The demo, sized for a 2-core CPU (measured; see the README). Everything model-side is a keyword argument of
    ``apvit_tiny`` (the model file is untouched): 64² input → 8×8 trunk grid, APP keeps 40 of 64 positions.

    Measured with the defaults on the 2-core CPU (one seed): 97.7 % test accuracy in 343 s (13 s per epoch). Two
    choices make it learn in minutes: the synthetic faces are drawn at difficulty 0.5 (half the nuisance range), and
    the IR trunk gets deep supervision (``aux_trunk_weight``: a training-only linear classifier on its flattened
    output map). Without it the shallow tiny trunk left the whole model at chance for 6 epochs; with a classifier on
    the trunk's spatial *mean* instead of the whole map it still did (the tiny trunk is nearly linear, so its mean
    carries little expression); with the map the model passes 90 % validation accuracy by epoch 9.
    """
    return dict(
        model="apvit_tiny",
        model_kwargs=dict(img_size=64, patch_keep=40),
        data="synthetic",
        data_kwargs=dict(train_size=4200, val_size=700, test_size=1400, seed=0, difficulty=0.5),
        transform="light",
        epochs=24,
        batch_size=64,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        no_decay=True,
        scheduler="cosine",
        sched_by="step",
        warmup_epochs=0.5,
        grad_clip=5.0,
        aux_trunk_weight=1.0,
        sampler="shuffle",
        seed=0,
    )


RECIPES: dict[str, dict] = {
    "apvit": dict(
        model="apvit", transform="apvit", epochs=40, batch_size=128, optimizer="sgd", lr=1e-3, momentum=0.9,
        weight_decay=5e-4, no_decay=False, scheduler="cosine", sched_by="epoch", min_lr=0.0, grad_clip=10.0,
        loss="ce", sampler="class_balanced", oversample_thr=0.15, oversample_method="sqrt", sync_bn=True,
        seed=25235,
    ),
    "fer_former": dict(
        model="fer_former", transform="fer_former", epochs=30, batch_size=16, optimizer="sgd", lr=1e-4,
        momentum=0.9, weight_decay=0.0, scheduler="step", sched_by="epoch", step_size=30, gamma=0.1,
        grad_clip=None, loss="fer_former", text_loss="ce", loss_weights=dict(cls=1.0, text=1.0),
        sampler="shuffle", val_fraction=0.1, seed=0,
    ),
    "conv_cut": dict(
        model="conv_cut", transform="conv_cut", batch_size=16, optimizer="adam", eps=1e-7, weight_decay=0.0,
        grad_clip=3.0, sampler="shuffle", seed=0, model_kwargs=dict(trunk="frozen", attention="tokens"),
        stages=[
            dict(name="train-head", epochs=100, lr=1e-3, scheduler="plateau",
                 plateau=dict(factor=0.1, patience=2, threshold=0.003, min_lr=1e-6), loss="ce_balanced",
                 early_stopping=dict(monitor="val_accuracy", patience=5, min_delta=0.003, restore_best=True),
                 model_updates=dict(drop_rate=0.1, det_norm=True)),
            dict(name="finetune-backbone", epochs=30, lr=1e-5, scheduler="inverse_time", sched_by="epoch",
                 decay_epochs=80.0, loss="ce",
                 early_stopping=dict(monitor="train_accuracy", patience=20, min_delta=0.003, restore_best=True),
                 select_best="val_accuracy", model_updates=dict(drop_rate=0.2, det_norm=False)),
        ],
    ),
    "synthetic": _synthetic_recipe(),
}
# Short names accepted on the command line
ALIASES = {"ferformer": "fer_former", "convcut": "conv_cut", "demo": "synthetic", "apvit_tiny": "synthetic"}
# The recipe a model gets when --recipe is not given
MODEL_RECIPES = {"apvit": "apvit", "apvit_tiny": "synthetic", "fer_former": "fer_former",
                 "fer_former_tiny": "fer_former", "conv_cut": "conv_cut", "conv_cut_tiny": "conv_cut"}
STAGE_KEYS = {"name", "model_updates"}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def canonical_recipe(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in RECIPES:
        raise ValueError(f"recipe: expected one of {', '.join(recipe_names())}, got {name!r}")
    return key


class Replace(dict):
    """A dict value given whole on the command line (``--set data_kwargs={...}``): it replaces the recipe's dict
    instead of being merged into it (dotted keys merge)."""


def parse_value(text: str) -> Any:
    """``--set key=value`` value: a Python/JSON literal (numbers, true/false/null, lists, dicts) or a string."""
    lowered = text.strip()
    mapping = {"true": True, "false": False, "null": None, "none": None}
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
    """``["lr=0.01", "model_kwargs.depth=2"]`` → nested override dict (dots descend into dict fields)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value)
    return out


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, Replace):
            out[k] = copy.deepcopy(dict(v))
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(recipe: Optional[str] = None, model: Optional[str] = None, overrides: Optional[dict] = None
                   ) -> TrainConfig:
    """Recipe defaults (``recipe``, else the model's usual recipe, else ``synthetic``) ← ``overrides``.

    ``model`` replaces the recipe's model (e.g. ``--model apvit --recipe synthetic``). Unknown keys raise.
    """
    if recipe is None:
        recipe = MODEL_RECIPES.get(model, "synthetic") if model else "synthetic"
    name = canonical_recipe(recipe)
    values = _merge(dataclasses.asdict(TrainConfig()), RECIPES[name])
    values["recipe"] = name
    if model is not None:
        values["model"] = model
    overrides = overrides or {}
    if "data" in overrides and overrides["data"] != values["data"]:
        values["data_kwargs"] = {}  # the recipe's reader options belong to its own dataset
    values = _merge(values, overrides)
    values["overrides"] = _merge({}, {k: v for k, v in overrides.items() if k != "overrides"})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


RUNTIME_KEYS = ("device", "workers", "threads")  # may change on resume without changing the result


def resume_config(run_dir, overrides: Optional[dict] = None) -> tuple[TrainConfig, list[str]]:
    """The config a run folder saved (``config.json``), with only the runtime keys of ``overrides`` applied (a
    resumed run replays the saved one exactly). Returns (config, the override keys ignored)."""
    from pathlib import Path

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"resume: {run_dir} holds no config.json; expected a run folder written by fastfer train")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"resume: {path} is not valid JSON ({exc})") from None
    overrides = overrides or {}
    saved.update({k: overrides[k] for k in RUNTIME_KEYS if k in overrides})
    saved["betas"] = tuple(saved.get("betas", (0.9, 0.999)))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"resume: {path}: unknown key(s) {unknown}")
    cfg = TrainConfig(**saved)
    validate(cfg)
    return cfg, sorted(k for k in overrides if k not in RUNTIME_KEYS)


def validate(cfg: TrainConfig) -> None:
    """Check the choices and ranges; errors name the field, the expected and the actual value."""
    def choice(name: str, value: Any, options: tuple) -> None:
        if value not in options:
            raise ValueError(f"{name}: expected one of {', '.join(map(str, options))}, got {value!r}")

    def positive(name: str, value: Any, allow_zero: bool = False) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero
                                                                                  else value > 0)
        if not ok:
            raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, "
                             f"got {value!r}")

    from fastfer.train.data import parse_data_spec

    parse_data_spec(cfg.data)
    choice("optimizer", cfg.optimizer, OPTIMIZERS)
    choice("scheduler", cfg.scheduler, SCHEDULERS)
    choice("sched_by", cfg.sched_by, ("epoch", "step"))
    choice("loss", cfg.loss, LOSSES)
    choice("sampler", cfg.sampler, SAMPLERS)
    choice("amp", cfg.amp, AMP_MODES)
    choice("val_source", cfg.val_source, ("auto", "test"))
    choice("text_loss", cfg.text_loss, ("ce", "infonce"))
    for name in ("epochs", "batch_size", "accum_steps"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ValueError(f"{name}: expected an int ≥ {0 if name == 'epochs' else 1}, got {value!r}")
    positive("lr", cfg.lr)
    positive("weight_decay", cfg.weight_decay, allow_zero=True)
    if cfg.grad_clip is not None:
        positive("grad_clip", cfg.grad_clip)
    positive("aux_trunk_weight", cfg.aux_trunk_weight, allow_zero=True)
    if cfg.ema is not None and not (isinstance(cfg.ema, float) and 0.0 < cfg.ema < 1.0):
        raise ValueError(f"ema: expected a decay in (0, 1) or None, got {cfg.ema!r}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected 0 < val_fraction < 1, got {cfg.val_fraction!r}")
    for i, stage in enumerate(cfg.stages or []):
        if not isinstance(stage, dict):
            raise ValueError(f"stages[{i}]: expected a dict of overrides, got {type(stage).__name__}")
        known = {f.name for f in dataclasses.fields(TrainConfig)} | STAGE_KEYS
        unknown = sorted(set(stage) - known)
        if unknown:
            raise ValueError(f"stages[{i}]: unknown key(s) {unknown}")


def stage_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig, dict]]:
    """``[(stage name, config of that stage, model_updates)]``; one ``("train", cfg, {})`` without stages.

    Each stage is the recipe's values ← the stage's values ← the user's explicit ``overrides`` (so ``--epochs 2``
    shortens every stage and ``--lr`` sets every stage's learning rate).
    """
    if not cfg.stages:
        return [("train", cfg, {})]
    out = []
    base = dataclasses.asdict(cfg)
    base["stages"] = None
    for i, stage in enumerate(cfg.stages):
        stage = dict(stage)
        name = stage.pop("name", f"stage{i + 1}")
        updates = stage.pop("model_updates", {}) or {}
        explicit = {k: v for k, v in cfg.overrides.items() if k != "stages"}
        sc = TrainConfig(**_merge(_merge(base, stage), explicit))
        validate(sc)
        out.append((name, sc, updates))
    return out
