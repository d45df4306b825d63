"""Small helpers shared by the FER-former and Conv-cut models: argument checks, label names, timm building."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from fastfer.labels import EXPRESSIONS


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def default_label_names(num_classes: int, label_names: Optional[Sequence[str]] = None) -> Optional[tuple[str, ...]]:
    """The classifier's row names: ``label_names`` if given (checked against ``num_classes``), else the canonical
    order for 7 or 8 classes, else None."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes: expected an int ≥ 0, got {num_classes!r}")
    if label_names is None:
        return EXPRESSIONS[:num_classes] if num_classes in (7, 8) else None
    names = tuple(label_names)
    if len(names) != num_classes:
        raise ValueError(f"label_names: expected {num_classes} names (num_classes), got {len(names)}: {names}")
    return names


def build_timm_model(cls: type, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a fastfer model: attaches the registered ``pretrained_cfg``
    (label names, mean/std, input size) and loads weights only from what the cfg names (a local ``file`` set by
    ``pretrained_cfg_overlay``)."""
    from timm.models import build_model_with_cfg

    return build_model_with_cfg(cls, variant, pretrained, **kwargs)
