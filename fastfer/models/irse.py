"""IR-50 / IR-SE face-recognition trunk (face.evoLVe "IR" units), optionally cut after the first stages.

APViT uses IR-50 cut after stage 3 (112² input → (B, 256, 14, 14)); FER-former reuses the same trunk.
State-dict keys follow APViT's IRSE (`input_layer.{0,1,2}`, `body.{stage}.{unit}.res_layer.{0..4}`,
`body.{stage}.{unit}.shortcut_layer.{0,1}`); face.evoLVe's flat `body.{0..23}` checkpoints are mapped onto
them by :func:`remap_evolve_body`. Written from the published architecture (face.evoLVe, APViT spec §2).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from torch import Tensor, nn

from fastfer.models._common import tracing

# Units per stage for each depth (face.evoLVe `get_blocks`); stage widths are always 64, 128, 256, 512.
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_DEPTHS = (64, 128, 256, 512)
MODES = ("ir", "ir_se")
INPUT_SIZES = (112, 224)


class SEModule(nn.Module):
    """Squeeze-excitation gate (IR-SE units): x * sigmoid(fc2(relu(fc1(avgpool(x))))), 1×1 convs, no bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """One IR unit: BN → conv3×3 → PReLU → conv3×3(stride) → BN (→ SE), plus the shortcut.

    Shortcut: MaxPool2d(1, stride) when ``in_channels == depth`` (a pure subsampling, no parameters), else
    Conv1×1(stride, no bias) + BN. x (B, in_channels, H, W) → (B, depth, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool = False):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),  # the stride sits on the second conv
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _check_config(num_layers: int, mode: str, num_stages: int, input_size: int) -> None:
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"num_layers: expected one of {tuple(STAGE_UNITS)}, got {num_layers!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not 1 <= num_stages <= 4:
        raise ValueError(f"num_stages: expected an int in 1..4 (stages to build), got {num_stages!r}")
    if input_size not in INPUT_SIZES:
        raise ValueError(f"input_size: expected one of {INPUT_SIZES}, got {input_size!r}")


class IRSE(nn.Module):
    """IR-{50,100,152} trunk of face.evoLVe without its face-recognition output layer.

    Args:
        num_layers: 50, 100 or 152 (units per stage (3,4,14,3), (3,13,30,3), (3,8,36,3)).
        mode: ``"ir"`` (APViT, FER-former) or ``"ir_se"`` (units with squeeze-excitation).
        num_stages: build only the first ``num_stages`` stages (APViT: 3 → 256 channels at 1/8 resolution).
        input_size: the face crop size the weights were trained for (112 or 224); recorded, not enforced —
            the trunk is fully convolutional.
        units: units per stage, overriding ``num_layers``'s table (at least ``num_stages`` entries); for
            small variants such as ``apvit_tiny``.
        widths: channels per stage, overriding (64, 128, 256, 512); the stem has ``widths[0]`` channels.
        stem_stride: stride of the stem conv (1 in IR-50); 2 halves every later map, for cheap variants.

    ``forward(x)``: x (B, 3, H, W) → (B, out_channels, H / reduction, W / reduction) with
    reduction = stem_stride · 2**num_stages; at 112² with 3 stages: (B, 256, 14, 14).
    """

    def __init__(self, num_layers: int = 50, mode: str = "ir", num_stages: int = 4, input_size: int = 112, *,
                 units: Optional[Sequence[int]] = None, widths: Optional[Sequence[int]] = None,
                 stem_stride: int = 1):
        super().__init__()
        _check_config(num_layers, mode, num_stages, input_size)
        units = tuple(STAGE_UNITS[num_layers] if units is None else units)
        widths = tuple(STAGE_DEPTHS if widths is None else widths)
        for name, values in (("units", units), ("widths", widths)):
            if len(values) < num_stages or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}: expected at least num_stages={num_stages} positive ints, got {values}")
        self.num_layers = num_layers
        self.mode = mode
        self.num_stages = num_stages
        self.input_size = input_size
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {stem_stride!r}")
        self.units = units[:num_stages]
        self.widths = widths[:num_stages]
        stem = widths[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem)
        )
        stages = []
        in_channels = stem
        for n_units, depth in zip(self.units, self.widths):
            blocks = [BottleneckIR(in_channels, depth, 2, se=mode == "ir_se")]
            blocks += [BottleneckIR(depth, depth, 1, se=mode == "ir_se") for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = depth
        self.body = nn.Sequential(*stages)
        self.out_channels = in_channels
        self.reduction = stem_stride * 2**num_stages

    def forward(self, x: Tensor) -> Tensor:
        if not tracing(x) and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"x: expected a (B, 3, H, W) image batch, got shape {tuple(x.shape)}")
        return self.body(self.input_layer(x))

    def remap_evolve_body(self, state_dict: dict, dropped: Optional[list] = None) -> dict:
        """face.evoLVe flat keys → this trunk's keys; see :func:`remap_evolve_body`."""
        standard = (STAGE_UNITS[self.num_layers][: self.num_stages], STAGE_DEPTHS[: self.num_stages])
        if (self.units, self.widths) != standard or self.reduction != 2**self.num_stages:
            raise ValueError(f"remap_evolve_body: this trunk has custom units/widths {self.units}/{self.widths}; "
                             f"face.evoLVe checkpoints are IR-{self.num_layers} with {standard[0]}/{standard[1]}")
        return remap_evolve_body(state_dict, self.num_layers, self.num_stages, dropped)


_FLAT_BODY = re.compile(r"^body\.(\d+)\.(.+)$")


def remap_evolve_body(
    state_dict: dict, num_layers: int = 50, num_stages: int = 4, dropped: Optional[list] = None
) -> dict:
    """Map a face.evoLVe IR backbone state_dict (flat ``body.{0..23}.*``) to ``body.{stage}.{unit}.*``.

    ``input_layer.*`` passes through; ``body`` units of stages ≥ ``num_stages`` and ``output_layer.*`` (the
    face-embedding head) are dropped and their names appended to ``dropped`` when a list is given. Keys
    already in ``body.{s}.{u}`` form are an error (the checkpoint is not a flat face.evoLVe one), as are
    unit indices beyond the network. Other keys pass through unchanged for the caller to report.
    """
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"num_layers: expected one of {tuple(STAGE_UNITS)}, got {num_layers!r}")
    units = STAGE_UNITS[num_layers]
    flat_to_stage = [(s, u) for s, n in enumerate(units) for u in range(n)]
    out: dict = {}
    for key, value in state_dict.items():
        match = _FLAT_BODY.match(key)
        if key.startswith("output_layer."):
            _note(dropped, key)
            continue
        if match is None:
            out[key] = value
            continue
        flat, rest = int(match.group(1)), match.group(2)
        if rest.split(".", 1)[0] not in ("res_layer", "shortcut_layer"):
            raise ValueError(
                f"state_dict: key {key!r} is not a flat face.evoLVe unit key (expected body.<i>.res_layer.* or "
                f"body.<i>.shortcut_layer.*); is this checkpoint already in body.<stage>.<unit> form?"
            )
        if flat >= len(flat_to_stage):
            raise ValueError(
                f"state_dict: key {key!r} names unit {flat}, but IR-{num_layers} has {len(flat_to_stage)} units"
            )
        stage, unit = flat_to_stage[flat]
        if stage >= num_stages:
            _note(dropped, key)
            continue
        out[f"body.{stage}.{unit}.{rest}"] = value
    return out


def _note(dropped: Optional[list], key: str) -> None:
    if dropped is not None:
        dropped.append(key)
