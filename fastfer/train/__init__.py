"""Training: recipes, the engine (AMP, compile, DDP, exact resume), checkpoints, metrics.

Nothing heavy is imported here; ``from fastfer.train.engine import Trainer`` builds runs,
``fastfer.train.checkpoint.build_model_from_checkpoint`` rebuilds a trained model from its weights file.
"""
from fastfer.train.recipes import RECIPES, TrainConfig, resolve_config

__all__ = ["RECIPES", "TrainConfig", "resolve_config"]
