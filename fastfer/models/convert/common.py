"""What every converter shares: the :class:`Conversion` result and the name/shape check against a target model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from fastfer.utils.errors import CheckpointError


@dataclass
class Conversion:
    """Result of a conversion: the fastfer state_dict plus what was dropped, filled or renamed."""

    state_dict: dict[str, Tensor]
    source: str
    architecture: str = "apvit"
    label_names: Optional[tuple[str, ...]] = None
    dropped: list[str] = field(default_factory=list)  # source keys deliberately not converted
    filled: list[str] = field(default_factory=list)  # target keys absent from the source, given defaults
    notes: list[str] = field(default_factory=list)
    complete: bool = False  # a whole model (rebuildable from the file alone), not a part for load_partial
    model_kwargs: dict = field(default_factory=dict)  # arguments of the registered model beyond the defaults

    def metadata(self) -> dict[str, str]:
        """Flat safetensors header entries (format, architecture, source, label names)."""
        meta = {"format": "fastfer", "architecture": self.architecture, "source": self.source}
        if self.label_names is not None:
            meta["label_names"] = json.dumps(list(self.label_names))
        return meta

    def model_metadata(self) -> Optional[dict]:
        """For a complete conversion, the ``fastfer`` metadata :func:`fastfer.models.weights.load_model` rebuilds
        the model from (registered name, its arguments, classes, label names); None for a partial one."""
        if not self.complete:
            return None
        meta = dict(model=self.architecture, model_kwargs=dict(self.model_kwargs), source=self.source)
        if self.label_names is not None:
            meta.update(num_classes=len(self.label_names), label_names=list(self.label_names))
        return meta

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.state_dict)} tensors converted"]
        if self.label_names is not None:
            lines.append(f"label_names: {', '.join(self.label_names)}")
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} source keys: {', '.join(self.dropped)}")
        if self.filled:
            lines.append(f"filled {len(self.filled)} missing keys with defaults: {', '.join(self.filled)}")
        lines.extend(self.notes)
        return "\n".join(lines)


def check_against(sd: dict[str, Tensor], target: dict[str, tuple[int, ...]], source: str, strict: bool,
                  conv: Conversion, required: Optional[Callable[[str], bool]] = None) -> None:
    """Shape check, unknown keys (error when strict, else dropped), missing keys (error; BN counters filled)."""
    for key in list(sd):
        if key not in target:
            continue
        if tuple(sd[key].shape) != target[key]:
            raise CheckpointError(
                f"{source}: {key}: expected shape {target[key]} for the fastfer model, got {tuple(sd[key].shape)}"
            )
    unknown = [k for k in sd if k not in target]
    if unknown and strict:
        raise CheckpointError(f"{source}: {len(unknown)} keys the model does not have: {', '.join(unknown)}")
    for k in unknown:
        conv.dropped.append(k)
        del sd[k]
    needed = [k for k in target if (required is None or required(k)) and k not in sd]
    counters = [k for k in needed if k.endswith("num_batches_tracked")]
    for k in counters:  # checkpoints from torch < 0.4.1 have no BN step counter; it is unused in eval
        sd[k] = torch.zeros((), dtype=torch.int64)
        conv.filled.append(k)
    missing = [k for k in needed if k not in counters]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} keys missing from the checkpoint: {', '.join(missing)}")
