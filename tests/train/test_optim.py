"""Learning-rate schedules, EMA, early stopping and parameter groups against hand-computed values."""
import math

import pytest
import torch

from fastfer.train.optim import EMA, EarlyStopping, LRSchedule, build_optimizer, param_groups
from fastfer.train.recipes import resolve_config


def _sched(steps_per_epoch=10, offset=0, **over):
    cfg = resolve_config("apvit", overrides=over)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    return LRSchedule(opt, cfg.schedule, cfg.optim.lr, steps_per_epoch, epoch_offset=offset), opt


def test_cosine_by_epoch_is_constant_within_an_epoch_and_reaches_zero():
    s, _ = _sched(epochs=4)
    lrs = [s.set_for_step(k) for k in range(40)]
    assert lrs[0] == lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 4)))
    assert lrs[39] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert s.factor(4.0) == pytest.approx(0.0, abs=1e-12)


def test_cosine_by_step_with_warmup():
    s, _ = _sched(epochs=2, sched_by="step", warmup_epochs=0.5, lr=0.1)
    assert s.set_for_step(0) == pytest.approx(0.1 * (1 / 10) / 0.5)  # first of 5 warm-up steps: 1/5 of the rate
    assert s.set_for_step(4) == pytest.approx(0.1)
    assert s.set_for_step(5) == pytest.approx(0.1)  # cosine starts after the warm-up
    assert s.set_for_step(12) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (1.2 - 0.5) / 1.5)))


def test_step_and_inverse_time_schedules():
    s, _ = _sched(scheduler="step", step_size=2, gamma=0.1, epochs=6)
    assert [round(s.set_for_step(k * 10) / 1e-3, 6) for k in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    s, _ = _sched(scheduler="inverse_time", decay_epochs=80.0, lr=1e-5, offset=7)
    assert s.set_for_step(30) == pytest.approx(1e-5 / (1 + (7 + 3) / 80))


def test_plateau_reduces_after_patience_epochs_without_absolute_improvement():
    s, opt = _sched(scheduler="plateau", lr=1e-3, plateau={"factor": 0.1, "patience": 2, "threshold": 0.003,
                                                            "min_lr": 1e-6})
    for acc in (0.50, 0.502, 0.503, 0.5029):  # gains below 0.003 do not count
        s.epoch_end({"val_accuracy": acc})
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    state = s.state_dict()
    s2, opt2 = _sched(scheduler="plateau", lr=1e-3)
    s2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_ema_update_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert not ema.module.weight.requires_grad


def test_early_stopping_waits_patience_and_keeps_the_best_weights():
    model = torch.nn.Linear(1, 1)
    stop = EarlyStopping("val_accuracy", patience=2, min_delta=0.01)
    seq = [0.5, 0.6, 0.605, 0.59]
    flags = []
    for e, acc in enumerate(seq):
        with torch.no_grad():
            model.weight.fill_(e)
        flags.append(stop.update(e, {"val_accuracy": acc}, model))
    assert flags == [False, False, False, True] and stop.best_epoch == 1
    assert stop.best_state["weight"].item() == 1.0
    with pytest.raises(KeyError, match="early_stopping.monitor: 'val_f1' is not a logged metric"):
        EarlyStopping("val_f1").update(0, {"val_accuracy": 1.0}, model)


def test_param_groups_no_decay_rule():
    import fastfer.models  # noqa: F401
    from fastfer.models import create_model

    model = create_model("apvit_tiny", num_classes=7, img_size=32, patch_keep=12, depth=1, embed_dim=16,
                         num_heads=2, keep_rates=[1.0])
    groups = param_groups(model, 0.05, no_decay=True)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.patch_pos_embed) in no_decay and id(model.head.bias) in no_decay
    assert id(model.head.weight) not in no_decay and groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, 5e-4, no_decay=False)) == 1  # APViT as run: decay on everything
    opt = build_optimizer(model, resolve_config("conv_cut").optim)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["eps"] == 1e-7
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(frozen, 0.0, False)
