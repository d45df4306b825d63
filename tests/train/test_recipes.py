"""Recipes: the paper values, override precedence (CLI over stage over recipe), per-family tasks."""
import pytest

from fastfer.train.config import parse_assignments
from fastfer.train.recipes import RECIPES, TrainConfig, resolve_config, stage_configs, task_class
from fastfer.train.recipes.apvit import ApvitTask
from fastfer.train.recipes.conv_cut import ConvCutTask
from fastfer.train.recipes.fer_former import FerFormerTask


def test_apvit_recipe_matches_the_released_config():
    c = resolve_config("apvit")
    o, s, lo, r, d = c.optim, c.schedule, c.loss, c.runtime, c.data
    assert (c.model.name, o.name, o.lr, o.momentum, o.weight_decay, o.no_decay) == ("apvit", "sgd", 1e-3, 0.9, 5e-4,
                                                                                   False)
    assert (s.name, s.by, s.min_lr, s.warmup_epochs, s.epochs, s.batch_size) == ("cosine", "epoch", 0.0, 0.0, 40, 128)
    assert (o.grad_clip, lo.name, lo.label_smoothing, s.ema) == (10.0, "ce", 0.0, None)
    assert (d.sampler, d.oversample_thr, d.oversample_method, r.sync_bn, r.seed) == ("class_balanced", 0.15, "sqrt",
                                                                                     True, 25235)
    assert d.transform == "apvit"


def test_fer_former_recipe_follows_d5_to_d8():
    c = resolve_config(model="fer_former")
    assert c.recipe == "fer_former"
    o, s = c.optim, c.schedule
    assert (o.name, o.lr, o.momentum, o.weight_decay, s.batch_size, s.epochs) == ("sgd", 1e-4, 0.9, 0.0, 16, 30)
    assert (s.name, s.step_size, s.gamma) == ("step", 30, 0.1)
    assert (c.loss.name, c.loss.text_loss, c.loss.weights) == ("fer_former", "ce", {"cls": 1.0, "text": 1.0})
    assert c.data.val_fraction == 0.1 and s.select_best is None  # D7: held-out val, last epoch kept


def test_conv_cut_stages_and_keras_equivalences():
    (n1, s1, u1), (n2, s2, u2) = stage_configs(resolve_config("conv_cut"))
    assert (n1, s1.optim.name, s1.optim.lr, s1.optim.eps, s1.optim.grad_clip, s1.schedule.name) == (
        "train-head", "adam", 1e-3, 1e-7, 3.0, "plateau")
    assert s1.schedule.plateau == {"factor": 0.1, "patience": 2, "threshold": 0.003, "min_lr": 1e-6}  # Keras 3
    assert s1.loss.name == "ce_balanced" and s1.schedule.early_stopping["monitor"] == "val_accuracy"
    assert u1 == {"trunk": "frozen", "drop_rate": 0.1, "det_norm": True}  # freezing is the recipe's decision
    assert (n2, s2.optim.lr, s2.schedule.name, s2.schedule.decay_epochs, s2.loss.name) == (
        "finetune-backbone", 1e-5, "inverse_time", 80.0, "ce")
    assert s2.schedule.early_stopping["monitor"] == "train_accuracy" and s2.schedule.early_stopping["patience"] == 20
    assert s2.schedule.select_best == "val_accuracy" and u2 == {"trunk": "frozen", "drop_rate": 0.2, "det_norm": False}


def test_overrides_win_over_stages_and_recipes():
    c = resolve_config("conv_cut", overrides={"epochs": 2, "lr": 5e-4, "batch_size": 4})
    stages = stage_configs(c)
    assert [s.schedule.epochs for _, s, _ in stages] == [2, 2] and [s.optim.lr for _, s, _ in stages] == [5e-4, 5e-4]
    assert c.overrides == {"schedule": {"epochs": 2, "batch_size": 4}, "optim": {"lr": 5e-4}}
    assert resolve_config(None, "apvit").recipe == "apvit"
    assert resolve_config("synthetic", "apvit").model.name == "apvit"  # a model on another model's recipe


def test_changing_the_dataset_drops_the_recipe_reader_options():
    assert resolve_config(None).data.kwargs["train_size"] > 0
    c = resolve_config(None, overrides={"data": "rafdb:/data/RAF-DB", **parse_assignments(["data_kwargs.images=apvit"])})
    assert c.data.kwargs == {"images": "apvit"}


def test_model_kwargs_merge_or_replace():
    c = resolve_config(None, overrides=parse_assignments(["model_kwargs.depth=2"]))
    assert c.model.kwargs == {**RECIPES["synthetic"]["model_kwargs"], "depth": 2}
    c = resolve_config(None, overrides=parse_assignments(["model_kwargs={'depth': 2}"]))
    assert c.model.kwargs == {"depth": 2}
    c = resolve_config(None, overrides=parse_assignments(["model.kwargs.depth=3"]))  # the nested spelling
    assert c.model.kwargs["depth"] == 3


def test_every_recipe_resolves_and_each_model_family_has_its_task():
    for name in RECIPES:
        assert isinstance(resolve_config(name), TrainConfig)
    assert task_class("apvit_tiny") is ApvitTask and task_class("fer_former") is FerFormerTask
    assert task_class("conv_cut_tiny") is ConvCutTask


def test_engine_has_no_model_branches():
    """The engine knows no model: no model names, no model classes, no fer_former/conv_cut special cases."""
    import inspect

    import fastfer.train.engine as engine
    import fastfer.train.stage as stage

    for module in (engine, stage):
        source = inspect.getsource(module)
        for word in ("fer_former", "FerFormer", "conv_cut", "ConvCut", "layernorm", "apvit", "APViT"):
            assert word not in source, f"{module.__name__} mentions {word}"
