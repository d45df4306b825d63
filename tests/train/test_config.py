"""The configuration: nested sections, short names, one merge path, and every field checked with its range."""
import json

import pytest

from fastfer.train.config import (ALIASES, ConfigError, Replace, TrainConfig, default_values, from_dict, merge,
                                  parse_assignments, parse_value, valid_keys)
from fastfer.train.recipes import resolve_config, resume_config


def test_sections_and_short_names():
    assert ALIASES["lr"] == ("optim", "lr") and ALIASES["model_kwargs"] == ("model", "kwargs")
    assert ALIASES["epochs"] == ("schedule", "epochs") and ALIASES["backend"] == ("runtime", "backend")
    assert "name" not in ALIASES and "kwargs" not in ALIASES  # ambiguous across sections
    nested = merge(default_values(), {"optim": {"lr": 0.5}, "model": "apvit", "loss_weights": {"text": 0}})
    assert nested["optim"]["lr"] == 0.5 and nested["model"]["name"] == "apvit"
    assert nested["loss"]["weights"] == {"cls": 1.0, "text": 0}


def test_json_round_trip_is_exact():
    cfg = resolve_config("conv_cut", overrides={"epochs": 3})
    again = from_dict(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg


def test_set_parsing_merges_dotted_keys_and_replaces_whole_dicts():
    over = parse_assignments(["lr=0.01", "model_kwargs.depth=2", "grad_clip=None", "amp=bf16", "betas=(0.9, 0.95)"])
    assert over == {"lr": 0.01, "model_kwargs": {"depth": 2}, "grad_clip": None, "amp": "bf16", "betas": (0.9, 0.95)}
    assert isinstance(parse_value("{'a': 1}"), Replace) and parse_value("true") is True
    with pytest.raises(ConfigError, match="--set: expected KEY=VALUE"):
        parse_assignments(["lr"])


@pytest.mark.parametrize("over, message", [
    ({"scheduler": "poly"}, "schedule.name: expected one of cosine"),
    ({"batch_size": 0}, r"schedule.batch_size: expected an int ≥ 1, got 0"),
    ({"lr": -1}, r"optim.lr: expected a finite number > 0, got -1"),
    ({"lr": float("nan")}, "optim.lr: expected a finite number"),
    ({"ema": 1.5}, r"schedule.ema: expected a finite number in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"data.val_fraction: expected a finite number in \(0, 1\)"),
    ({"stages": [{"lrr": 1}]}, r"stages\[0\]: unknown key 'lrr'"),
    ({"data": "cifar"}, "data: expected 'synthetic' or NAME:PATH"),
    ({"seed": "abc"}, "runtime.seed: expected an int ≥ 0, got 'abc'"),
    ({"momentum": float("nan")}, r"optim.momentum: expected a finite number in \[0, 1\)"),
    ({"momentum": 1.0}, r"optim.momentum: expected a finite number in \[0, 1\)"),
    ({"label_smoothing": 5}, r"loss.label_smoothing: expected a finite number in \[0, 1\), got 5"),
    ({"max_steps_per_epoch": -3}, r"schedule.max_steps_per_epoch: expected an int ≥ 1 or null \(unset\), got -3"),
    ({"max_steps_per_epoch": 0}, r"schedule.max_steps_per_epoch: expected an int ≥ 1 or null \(unset\), got 0"),
    ({"save_every_steps": -1}, r"runtime.save_every_steps: expected an int ≥ 1 or null \(unset\), got -1"),
    ({"min_lr": 0.1, "lr": 0.01}, r"schedule.min_lr: expected ≤ optim.lr \(0.01\), got 0.1"),
    ({"warmup_epochs": -1}, r"schedule.warmup_epochs: expected a finite number ≥ 0, got -1"),
    ({"model": "resnet50"}, r"model: expected a fastfer model \(apvit, apvit_tiny, .*\), got 'resnet50'"),
    ({"model_kwargs": {"bogus": 1}}, r"model.kwargs: apvit_tiny takes no argument\(s\) bogus; it takes .*depth"),
    ({"learning_rate": 1}, r"unknown key 'learning_rate'; valid keys: .*lr"),
    ({"optim": {"lrr": 1}}, r"unknown key\(s\) optim.lrr; optim has .*lr"),
    ({"backend": "tpu"}, r"runtime.backend: backend: expected one of .*got 'tpu'"),
])
def test_bad_values_are_named(over, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, overrides=over)


def test_valid_keys_list_the_sections_and_short_names():
    keys = valid_keys()
    assert {"model", "data", "optim", "schedule", "loss", "runtime", "lr", "epochs", "data_kwargs"} <= set(keys)


def test_resume_reads_the_saved_config_and_applies_runtime_keys_only(tmp_path):
    cfg = resolve_config(None, overrides={"epochs": 3})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_json()))
    again, ignored = resume_config(tmp_path, {"threads": 1, "lr": 9.0})
    assert again.runtime.threads == 1 and again.optim.lr == cfg.optim.lr and ignored == ["optim.lr"]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        resume_config(tmp_path)
    with pytest.raises(ConfigError, match="holds no config.json"):
        resume_config(tmp_path / "nowhere")


def test_defaults_are_a_valid_config():
    assert isinstance(from_dict({}), TrainConfig)
