"""timm ConvNeXt weights for :class:`~fastfer.models.conv_cut.ConvCut`'s trunk.

- :func:`convnext_to_convcut`: a timm ConvNeXt-B state_dict (``convnext_base.fb_in22k_ft_in1k``, the PyTorch
  twin of Keras' "imagenet" ConvNeXtBase; local file) → the truncated trunk ``base_model.*``, by name. (An
  original FB-layout file is remapped by timm when loaded into ``timm.create_model("convnext_base")``.)
- :func:`load_convnext_trunk`: the same, loaded into a model (every trunk tensor required).

A released Keras Conv-cut model (trunk and head) converts with :mod:`fastfer.models.convert.conv_cut_keras`.
``fastfer convert --from convnext-b CONVNEXT_FILE DST.safetensors`` writes a trunk-only Conv-cut state_dict.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from fastfer.models.weights import unwrap_state_dict

_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


def convnext_to_convcut(state_dict: dict, depths: Sequence[int] = (3, 3, 24), cut: str = "block23_norm",
                        dropped: Optional[list] = None) -> dict:
    """timm ConvNeXt state_dict → ``base_model.*`` of a Conv-cut trunk with ``depths`` built blocks.

    Kept: stem, stages 0–1, stage 2 downsample and blocks < depths[2]; with ``cut="block23_norm"`` the last
    built block keeps only ``conv_dw`` and ``norm``. Everything else (remaining blocks, layer scale and MLP of
    the cut block, stage 3, head) is dropped and named in ``dropped``. Missing trunk tensors are an error.
    """
    sd = unwrap_state_dict(state_dict)
    if "downsample_layers.0.0.weight" in sd:
        raise ValueError("state_dict: this is the original FB ConvNeXt layout; load it through timm first "
                         "(timm.create_model('convnext_base', pretrained=True, pretrained_cfg_overlay="
                         "dict(file=PATH)).state_dict() remaps it)")
    if "stem.0.weight" not in sd:
        raise ValueError("state_dict: no 'stem.0.weight'; expected a timm ConvNeXt state_dict")
    out = {}
    last = depths[2] - 1
    for key, value in sd.items():
        keep = key.startswith(("stem.", "stages.0.", "stages.1.", "stages.2.downsample."))
        m = _BLOCK.match(key)
        if m and int(m.group(1)) == 2:
            block, rest = int(m.group(2)), m.group(3)
            keep = block < last or (block == last and (cut == "block22" or rest.startswith(("conv_dw.", "norm."))))
        if keep:
            out[f"base_model.{key}"] = value
        elif dropped is not None:
            dropped.append(key)
    return out


def load_convnext_trunk(model, state_dict: dict) -> list[str]:
    """Load timm ConvNeXt weights into ``model.base_model`` (every trunk tensor required); returns dropped names."""
    dropped: list[str] = []
    trunk = convnext_to_convcut(state_dict, _built_depths(model), model.base_model.cut, dropped)
    expected = {f"base_model.{k}" for k in model.base_model.state_dict()}
    missing, extra = sorted(expected - trunk.keys()), sorted(trunk.keys() - expected)
    if missing or extra:
        raise ValueError(f"state_dict does not fit the trunk: missing {missing[:5]}, unexpected {extra[:5]}")
    model.load_state_dict(trunk, strict=False)
    return dropped


def _built_depths(model) -> tuple[int, ...]:
    return tuple(len(stage.blocks) for stage in model.base_model.stages)
