"""Conv-cut recipe and task: two stages, the model changing between them.

| recipe | model | what it reproduces |
|---|---|---|
| ``conv_cut`` | ``conv_cut`` | stage 1 "train-head" (frozen trunk, Adam 1e-3, clipnorm 3, ReduceLROnPlateau, early stopping on val acc, balanced class weights, dropout 0.1, LN after the DET) then stage 2 "finetune-backbone" (trunk still frozen as released: 0 trainable trunk weights; Adam 1e-5 / (1 + epoch/80), early stopping on train acc, best val acc kept, dropout 0.2, no LN), with the Keras → PyTorch equivalences of the released code |
"""
from __future__ import annotations

from torch import nn

from fastfer.train.config import ConfigError
from fastfer.train.task import ClassifierTask

CONV_CUT = dict(
    model="conv_cut", transform="conv_cut", batch_size=16, optimizer="adam", eps=1e-7, weight_decay=0.0,
    grad_clip=3.0, sampler="shuffle", seed=0, model_kwargs=dict(attention="tokens"),
    stages=[
        dict(name="train-head", epochs=100, lr=1e-3, scheduler="plateau",
             plateau=dict(factor=0.1, patience=2, threshold=0.003, min_lr=1e-6), loss="ce_balanced",
             early_stopping=dict(monitor="val_accuracy", patience=5, min_delta=0.003, restore_best=True),
             model_updates=dict(trunk="frozen", drop_rate=0.1, det_norm=True)),
        dict(name="finetune-backbone", epochs=30, lr=1e-5, scheduler="inverse_time", sched_by="epoch",
             decay_epochs=80.0, loss="ce",
             early_stopping=dict(monitor="train_accuracy", patience=20, min_delta=0.003, restore_best=True),
             select_best="val_accuracy", model_updates=dict(trunk="frozen", drop_rate=0.2, det_norm=False)),
    ],
)

UPDATES = ("trunk", "drop_rate", "det_norm")


class ConvCutTask(ClassifierTask):
    """Stage updates: ``trunk`` (``frozen`` / ``all`` / ``last_n``: what of the ConvNeXt trunk trains, through
    ``model.set_trunk_training``), ``drop_rate`` (every Dropout's p) and ``det_norm`` (add or remove the
    LayerNorm after the DET block)."""

    def begin_stage(self, stage: str, updates: dict) -> None:
        unknown = sorted(set(updates) - set(UPDATES))
        if unknown:
            raise ConfigError(f"stages.{stage}.model_updates: unknown key(s) {unknown} (known: {', '.join(UPDATES)})")
        model = self.model
        if "trunk" in updates:
            model.set_trunk_training(updates["trunk"])
        if "drop_rate" in updates:
            for m in model.modules():
                if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
                    m.p = float(updates["drop_rate"])
            if hasattr(model, "drop_rate"):
                model.drop_rate = float(updates["drop_rate"])
        if "det_norm" in updates:
            if updates["det_norm"] and model.layernorm is None:
                from timm.layers import LayerNorm

                ref = next(model.parameters())
                model.layernorm = LayerNorm(model.num_features, eps=1e-6).to(ref.device)
            elif not updates["det_norm"]:
                model.layernorm = None
