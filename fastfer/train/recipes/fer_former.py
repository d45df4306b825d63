"""FER-former recipe and task.

| recipe | model | what it reproduces |
|---|---|---|
| ``fer_former`` | ``fer_former`` | SGD 1e-4 / momentum 0.9 / wd 0, StepLR(30, 0.1) (never fires in 30 epochs), batch 16, loss CE(label) + CE(100·cos text), 10 % of train held out for validation, last epoch kept; logs label-head (official), text-head and fused accuracy |
"""
from __future__ import annotations

from torch import Tensor, nn

from fastfer.train.config import ConfigError
from fastfer.train.task import ClassifierTask

FER_FORMER = dict(
    model="fer_former", transform="fer_former", epochs=30, batch_size=16, optimizer="sgd", lr=1e-4,
    momentum=0.9, weight_decay=0.0, scheduler="step", sched_by="epoch", step_size=30, gamma=0.1,
    grad_clip=None, loss="fer_former", text_loss="ce", loss_weights=dict(cls=1.0, text=1.0),
    sampler="shuffle", val_fraction=0.1, seed=0,
)


def _text_ready(model: nn.Module) -> bool:
    return hasattr(model, "forward_outputs") and bool(getattr(model, "text_ready", False))


class FerFormerTask(ClassifierTask):
    """Both heads: ``cls`` · CE(label head) + ``text`` · (CE or InfoNCE of the CLIP-text similarity head) with
    loss ``fer_former``; with a text weight of 0, or loss ``ce``, the label head alone."""

    def __init__(self, model, cfg, label_names, train_targets):
        super().__init__(model, cfg, label_names, train_targets)
        self._criterion = None

    def _both_heads(self) -> bool:
        return self.cfg.loss.name == "fer_former" and self.cfg.loss.weights.get("text", 1.0) > 0

    def check(self) -> None:
        if self.cfg.loss.name not in ("ce", "ce_balanced", "fer_former"):
            raise ConfigError(f"loss.name: FER-former trains with fer_former, ce or ce_balanced, got "
                              f"{self.cfg.loss.name!r}")
        if self._both_heads() and not _text_ready(self.model):
            raise ConfigError("loss: the FER-former text loss needs text features; pass --text-encoder FILE (a "
                              "tensor file with 'text_embed' [C, 512], or open_clip:PATH to a local CLIP "
                              "ViT-B/32) or train the label head only with --set loss_weights.text=0")

    def set_config(self, cfg) -> None:
        super().set_config(cfg)
        self._criterion = None

    def criterion(self):
        if self._criterion is None:
            from fastfer.models.fer_former import FerFormerLoss

            w = self.cfg.loss.weights
            self._criterion = FerFormerLoss(w.get("cls", 1.0), w.get("text", 1.0), self.cfg.loss.text_loss,
                                            self.cfg.loss.label_smoothing)
        return self._criterion

    def forward(self, x: Tensor):
        if self._both_heads():
            return tuple(self.model.forward_outputs(x))
        return super().forward(x)

    def loss(self, out, y: Tensor):
        if not self._both_heads():
            return super().loss(out, y)
        from fastfer.models.fer_former import FerFormerOutput

        o = FerFormerOutput(*out)
        return self.criterion()(o, y).loss, o.logits

    @staticmethod
    def eval_outputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        if _text_ready(model):
            o = model.forward_outputs(x)
            return {"logits": o.logits, "text_logits": o.text_logits}
        return {"logits": model(x)}
