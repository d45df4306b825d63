"""Recipes: the paper values, override precedence (CLI over stage over recipe), parsing and validation."""
import pytest

from fastfer.train.recipes import (RECIPES, Replace, TrainConfig, parse_assignments, parse_value, resolve_config,
                                   stage_configs)


def test_apvit_recipe_matches_the_released_config():
    c = resolve_config("apvit")
    assert (c.model, c.optimizer, c.lr, c.momentum, c.weight_decay, c.no_decay) == ("apvit", "sgd", 1e-3, 0.9, 5e-4,
                                                                                     False)
    assert (c.scheduler, c.sched_by, c.min_lr, c.warmup_epochs, c.epochs, c.batch_size) == ("cosine", "epoch", 0.0,
                                                                                             0.0, 40, 128)
    assert (c.grad_clip, c.loss, c.label_smoothing, c.ema) == (10.0, "ce", 0.0, None)
    assert (c.sampler, c.oversample_thr, c.oversample_method, c.sync_bn, c.seed) == ("class_balanced", 0.15, "sqrt",
                                                                                     True, 25235)
    assert c.transform == "apvit"


def test_fer_former_recipe_follows_d5_to_d8():
    c = resolve_config(model="fer_former")
    assert c.recipe == "fer_former"
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs) == ("sgd", 1e-4, 0.9, 0.0, 16, 30)
    assert (c.scheduler, c.step_size, c.gamma) == ("step", 30, 0.1)
    assert (c.loss, c.text_loss, c.loss_weights) == ("fer_former", "ce", {"cls": 1.0, "text": 1.0})
    assert c.val_fraction == 0.1 and c.select_best is None  # D7: held-out val, last epoch kept


def test_conv_cut_stages_and_keras_equivalences():
    (n1, s1, u1), (n2, s2, u2) = stage_configs(resolve_config("conv_cut"))
    assert (n1, s1.optimizer, s1.lr, s1.eps, s1.grad_clip, s1.scheduler) == ("train-head", "adam", 1e-3, 1e-7, 3.0,
                                                                              "plateau")
    assert s1.plateau == {"factor": 0.1, "patience": 2, "threshold": 0.003, "min_lr": 1e-6}  # Keras patience 3
    assert s1.loss == "ce_balanced" and s1.early_stopping["monitor"] == "val_accuracy" and u1 == {
        "drop_rate": 0.1, "det_norm": True}
    assert (n2, s2.lr, s2.scheduler, s2.decay_epochs, s2.loss) == ("finetune-backbone", 1e-5, "inverse_time", 80.0,
                                                                   "ce")
    assert s2.early_stopping["monitor"] == "train_accuracy" and s2.early_stopping["patience"] == 20
    assert s2.select_best == "val_accuracy" and u2 == {"drop_rate": 0.2, "det_norm": False}


def test_overrides_win_over_stages_and_recipes():
    c = resolve_config("conv_cut", overrides={"epochs": 2, "lr": 5e-4, "batch_size": 4})
    stages = stage_configs(c)
    assert [s.epochs for _, s, _ in stages] == [2, 2] and [s.lr for _, s, _ in stages] == [5e-4, 5e-4]
    assert c.overrides == {"epochs": 2, "lr": 5e-4, "batch_size": 4}
    assert resolve_config(None, "apvit").recipe == "apvit"
    assert resolve_config("synthetic", "apvit").model == "apvit"  # a model on another model's recipe


def test_changing_the_dataset_drops_the_recipe_reader_options():
    assert resolve_config(None).data_kwargs["train_size"] > 0
    c = resolve_config(None, overrides={"data": "rafdb:/data/RAF-DB", **parse_assignments(["data_kwargs.images=apvit"])})
    assert c.data_kwargs == {"images": "apvit"}


def test_set_parsing_merges_dotted_keys_and_replaces_whole_dicts():
    over = parse_assignments(["lr=0.01", "model_kwargs.depth=2", "grad_clip=None", "amp=bf16", "betas=(0.9, 0.95)"])
    assert over == {"lr": 0.01, "model_kwargs": {"depth": 2}, "grad_clip": None, "amp": "bf16", "betas": (0.9, 0.95)}
    assert isinstance(parse_value("{'a': 1}"), Replace) and parse_value("true") is True
    c = resolve_config(None, overrides=parse_assignments(["model_kwargs.depth=2"]))
    assert c.model_kwargs == {**RECIPES["synthetic"]["model_kwargs"], "depth": 2}
    c = resolve_config(None, overrides=parse_assignments(["model_kwargs={'depth': 2}"]))
    assert c.model_kwargs == {"depth": 2}
    with pytest.raises(ValueError, match="--set: expected KEY=VALUE"):
        parse_assignments(["lr"])


@pytest.mark.parametrize("over, message", [
    ({"scheduler": "poly"}, "scheduler: expected one of"),
    ({"batch_size": 0}, "batch_size: expected an int ≥ 1"),
    ({"lr": -1}, "lr: expected a positive number"),
    ({"ema": 1.5}, "ema: expected a decay in"),
    ({"val_fraction": 1.0}, "val_fraction: expected 0 < val_fraction < 1"),
    ({"stages": [{"lrr": 1}]}, r"stages\[0\]: unknown key"),
    ({"data": "cifar"}, "data: expected 'synthetic' or NAME:PATH"),
])
def test_bad_values_are_named(over, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(None, overrides=over)


def test_every_recipe_resolves():
    for name in RECIPES:
        assert isinstance(resolve_config(name), TrainConfig)
