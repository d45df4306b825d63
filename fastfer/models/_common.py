"""Small helpers shared by fastfer's models: argument checks, label names, tracing, timm building, intermediates."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.fx
from torch import Tensor, nn

from fastfer.labels import EXPRESSIONS

OUTPUT_FORMATS = ("NCHW", "NLC")


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


def tracing(x: Any) -> bool:
    """True while ``x`` is being traced by torch.fx (symbolic tracing, torchvision's feature extractor) or
    ``torch.jit.trace``. Models skip their input checks then: a check is Python control flow on the input's
    shape, which symbolic tracing cannot record. Eager calls, torch.compile and torch.export keep the checks."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()


def take_indices(num_levels: int, indices: Union[None, int, Sequence[int]]) -> tuple[list[int], int]:
    """timm's intermediate-index rule: None → every level, int n → the last n, a sequence → those levels
    (negative from the end). Returns (absolute indices, largest index); out-of-range values are a ValueError."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices: last-n {indices} is out of range (1 to {num_levels})")
        taken = list(range(num_levels - indices, num_levels))
    else:
        taken = []
        for i in indices:
            idx = num_levels + i if i < 0 else i
            if not 0 <= idx < num_levels:
                raise ValueError(f"indices: feature index {i} is out of range (0 to {num_levels - 1})")
            taken.append(idx)
        if not taken:
            raise ValueError("indices: expected at least one feature index, got an empty sequence")
    return taken, max(taken)


def check_output_fmt(output_fmt: Any) -> str:
    """``output_fmt`` as a plain string ('NCHW' or 'NLC'; timm's ``Format`` enum is accepted)."""
    fmt = getattr(output_fmt, "value", output_fmt)
    check_choice("output_fmt", fmt, OUTPUT_FORMATS)
    return fmt


def build_timm_model(cls: type, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a fastfer model: attaches the registered ``pretrained_cfg``
    (label names, mean/std, input size), loads weights only from what the cfg names (a local ``file`` set by
    ``pretrained_cfg_overlay``) and wraps the model for ``features_only=True`` with timm's FeatureGetterNet
    (which calls the model's ``forward_intermediates``)."""
    from timm.models import build_model_with_cfg

    feature_cfg = dict(feature_cls="getter")
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def scatter_to_grid(tokens: Tensor, positions: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """Patch tokens (B, M, C) at grid positions (B, M) → (B, C, gh, gw) map; positions without a token are 0."""
    B, _, C = tokens.shape
    grid = tokens.new_zeros(B, grid_size[0] * grid_size[1], C)
    grid = grid.scatter(1, positions.unsqueeze(-1).expand(-1, -1, C), tokens)
    return grid.reshape(B, grid_size[0], grid_size[1], C).permute(0, 3, 1, 2).contiguous()
