"""AttentivePatchPool: keep the k most active positions of a CNN feature map as tokens (APViT APP)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx
from torch import Tensor, nn

from fastfer.ops import patch_pool

torch.fx.wrap("patch_pool")  # FX: one call node (the op's output shapes depend on k, not on tracing)


class AttentivePatchPool(nn.Module):
    """Scores every position of a feature map over its channels and keeps the top ``k`` as tokens.

    ``forward(x, pos=None)``: x (B, C, H, W) in any memory format, or (B, N, C) tokens; optional pos (N, C)
    added to the kept tokens. Returns tokens (B, k, C) in raster order of the kept positions. No parameters;
    gradients reach x and pos, not the selection. After each call ``last_index`` (B, k) and ``last_scores``
    (B, N) hold the selection for visualisation (detached; not recorded while torch.compile traces).
    """

    def __init__(self, k: int, score: str = "l1"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int (positions to keep), got {k!r}")
        self.k = k
        self.score = score
        self.last_index: Optional[Tensor] = None
        self.last_scores: Optional[Tensor] = None

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        result = patch_pool(x, self.k, pos=pos, score=self.score)
        if not (torch.compiler.is_compiling() or isinstance(result.index, torch.fx.Proxy)):
            self.last_index, self.last_scores = result.index.detach(), result.scores.detach()
        return result.tokens

    def extra_repr(self) -> str:
        return f"k={self.k}, score={self.score!r}"
