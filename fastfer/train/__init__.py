"""Training: configuration (:mod:`.config`), recipes and per-family tasks (:mod:`.recipes`, :mod:`.task`), the
engine (AMP, compile, DDP, exact resume; :mod:`.engine`), checkpoints, metrics, evaluation.

Nothing heavy is imported here; ``from fastfer.train.engine import Trainer`` builds runs.
"""
from fastfer.train.config import ConfigError, TrainConfig
from fastfer.train.recipes import RECIPES, resolve_config

__all__ = ["RECIPES", "ConfigError", "TrainConfig", "resolve_config"]
