"""Training recipes: one resolved :class:`~fastfer.train.config.TrainConfig` per paper (and a fast demo), every
field overridable, each with the task object of its model family (:mod:`fastfer.train.task`).

| recipe | model | task | module |
|---|---|---|---|
| ``apvit`` | ``apvit`` | :class:`ApvitTask` | :mod:`.apvit` |
| ``synthetic`` (the main job) | ``apvit_tiny`` | :class:`ApvitTask` | :mod:`.apvit` |
| ``fer_former`` | ``fer_former`` | :class:`FerFormerTask` | :mod:`.fer_former` |
| ``conv_cut`` (two stages) | ``conv_cut`` | :class:`ConvCutTask` | :mod:`.conv_cut` |

Choices the papers leave open are fields with the recipe's value spelled out, so a run's ``config.json`` says
what was used. Recipes are written with the short names of :data:`fastfer.train.config.ALIASES`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from fastfer.train.config import (ConfigError, TrainConfig, canonical, default_values, from_dict, merge,
                                  parse_assignments, parse_value)
from fastfer.train.recipes.apvit import APVIT, SYNTHETIC, ApvitTask
from fastfer.train.recipes.conv_cut import CONV_CUT, ConvCutTask
from fastfer.train.recipes.fer_former import FER_FORMER, FerFormerTask
from fastfer.train.task import Task

RECIPES: dict[str, dict] = {"apvit": APVIT, "fer_former": FER_FORMER, "conv_cut": CONV_CUT, "synthetic": SYNTHETIC}
# Short names accepted on the command line
ALIASES = {"ferformer": "fer_former", "convcut": "conv_cut", "demo": "synthetic", "apvit_tiny": "synthetic"}
# The recipe a model gets when --recipe is not given, and the task of each model family
MODEL_RECIPES = {"apvit": "apvit", "apvit_tiny": "synthetic", "fer_former": "fer_former",
                 "fer_former_tiny": "fer_former", "conv_cut": "conv_cut", "conv_cut_tiny": "conv_cut"}
FAMILIES = {"apvit": ApvitTask, "fer_former": FerFormerTask, "conv_cut": ConvCutTask}
STAGE_KEYS = {"name", "model_updates"}
RUNTIME_KEYS = ("device", "workers", "threads")  # may change on resume without changing the result

__all__ = ["MODEL_RECIPES", "RECIPES", "canonical_recipe", "model_class", "parse_assignments", "parse_value",
           "recipe_names", "resolve_config", "resume_config", "stage_configs", "task_class"]


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def canonical_recipe(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in RECIPES:
        raise ConfigError(f"recipe: expected one of {', '.join(recipe_names())}, got {name!r}")
    return key


def _family(model_name: str) -> str:
    if model_name not in MODEL_RECIPES:
        raise ConfigError(f"model: expected a fastfer model ({', '.join(MODEL_RECIPES)}), got {model_name!r}; "
                          f"other timm models have no fastfer training task")
    return next(f for f in FAMILIES if model_name.startswith(f))


def task_class(model_name: str) -> type[Task]:
    """The task of a registered fastfer model's family."""
    return FAMILIES[_family(model_name)]


def model_class(model_name: str) -> type:
    """The model class behind a registered fastfer model name (for checking constructor arguments)."""
    from fastfer.models import APViT, ConvCut, FerFormer

    return {"apvit": APViT, "fer_former": FerFormer, "conv_cut": ConvCut}[_family(model_name)]


def resolve_config(recipe: Optional[str] = None, model: Optional[str] = None,
                   overrides: Optional[dict] = None) -> TrainConfig:
    """Defaults ← recipe (``recipe``, else the model's usual recipe, else ``synthetic``) ← ``model`` ← ``overrides``
    (nested or short names; see :mod:`fastfer.train.config`). Unknown keys and bad values raise ConfigError."""
    if recipe is None:
        recipe = MODEL_RECIPES.get(model, "synthetic") if model else "synthetic"
    name = canonical_recipe(recipe)
    values = merge(default_values(), RECIPES[name], f"recipe {name}")
    values["recipe"] = name
    if model is not None:
        values["model"]["name"] = model
    explicit = canonical(overrides or {}, "overrides")
    new_spec = explicit.get("data", {}).get("spec")
    if new_spec is not None and new_spec != values["data"]["spec"]:
        values["data"]["kwargs"] = {}  # the recipe's reader options belong to its own dataset
    values = merge(values, explicit)
    values["overrides"] = json.loads(json.dumps(explicit))
    return from_dict(values)


def stage_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig, dict]]:
    """``[(stage name, config of that stage, model_updates)]``; one ``("train", cfg, {})`` without stages.

    Each stage is the recipe's values ← the stage's values ← the user's explicit ``overrides`` (so ``--epochs 2``
    shortens every stage and ``--lr`` sets every stage's learning rate).
    """
    if not cfg.stages:
        return [("train", cfg, {})]
    base = cfg.to_json()
    base["stages"] = None
    out = []
    for i, stage in enumerate(cfg.stages):
        stage = dict(stage)
        name = stage.pop("name", f"stage{i + 1}")
        updates = stage.pop("model_updates", {}) or {}
        explicit = {k: v for k, v in cfg.overrides.items() if k != "stages"}
        values = merge(merge(base, stage, f"stages[{i}]"), explicit)
        out.append((name, from_dict(values), updates))
    return out


def resume_config(run_dir, overrides: Optional[dict] = None) -> tuple[TrainConfig, list[str]]:
    """The config a run folder saved (``config.json``), with only the runtime keys of ``overrides`` applied (a
    resumed run replays the saved one exactly). Returns (config, the override keys ignored)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"resume: {run_dir} holds no config.json; expected a run folder written by fastfer train")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"resume: {path} is not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"resume: {path}: expected a JSON object, got {type(saved).__name__}")
    explicit = canonical(overrides or {}, "overrides")
    runtime = {k: v for k, v in explicit.get("runtime", {}).items() if k in RUNTIME_KEYS}
    ignored = sorted(f"{s}.{k}" for s, d in explicit.items() if isinstance(d, dict) for k in d
                     if not (s == "runtime" and k in RUNTIME_KEYS))
    try:
        cfg = from_dict(merge(saved, {"runtime": runtime}, str(path)))
    except ConfigError as exc:
        raise ConfigError(f"resume: {path}: {exc}") from None
    return cfg, ignored


def describe_recipe(name: str) -> str:
    """The recipe's settings as JSON (for ``--print-config``-like listings)."""
    return json.dumps(dataclasses.asdict(resolve_config(name)), indent=2)
