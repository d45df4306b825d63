"""PoolingBlock: a pre-norm ViT block whose attention can drop tokens (APViT's PoolingBlock)."""
from __future__ import annotations

from typing import Optional, Sequence

from timm.layers import DropPath, Mlp
import torch
from torch import Tensor, nn

from fastfer.nn.attention import TokenPoolAttention


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, C), index (B, M) → x[b, index[b]] (B, M, C)."""
    if isinstance(x, Tensor) and isinstance(x.shape[0], int) and isinstance(x.shape[1], int):
        # Whole C-rows of one (B·N, C) matrix: index_select copies a row at a time, where gather with the
        # index expanded over C reads the index once per element (~4x slower on CPU).
        B, N, C = x.shape
        M = index.shape[1]
        flat = (index + torch.arange(B, device=index.device).unsqueeze(1) * N).reshape(B * M)
        return x.reshape(B * N, C).index_select(0, flat).view(B, M, C)
    # FX proxies and symbolic shapes (torch.compile with dynamic shapes)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def kept_positions(indices: Sequence[Optional[Tensor]]) -> list[Optional[Tensor]]:
    """Map per-layer kept indices back to positions in the first layer's input.

    indices: for each layer in order, its ``last_index`` (B, M_l) relative to that layer's input, or None when
    the layer kept every token (its ``last_index`` 0..N-1 works too: it composes as the identity).
    Returns, for each layer, the (B, M_l) positions in the original token sequence (0 = CLS, p = patch p-1),
    or None while no layer has dropped tokens yet. Use it to draw which patches survive each pooling stage.
    """
    positions: Optional[Tensor] = None
    out: list[Optional[Tensor]] = []
    for index in indices:
        if index is not None:
            positions = index if positions is None else positions.gather(1, index)
        out.append(positions)
    return out


class PoolingBlock(nn.Module):
    """x → x + attn(LN(x)) → keep the tokens the attention selected → x + MLP(LN(x)).

    ``forward(x)``: x (B, N, dim) with CLS at 0 → (B, M, dim), M = 1 + keep (N when nothing is dropped).
    The residual is gathered after the attention residual and before the MLP, exactly where APViT prunes;
    since the projection is per token, only the kept queries' attention is ever computed.
    Submodule names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) match timm's ViT Block.
    Keep count and score: see :class:`TokenPoolAttention`; ``attn.last_index`` / ``attn.last_scores`` hold
    the last selection.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 keep_rate: Optional[float] = None, keep: Optional[int] = None, score: str = "logit_sum",
                 scale: Optional[float] = None, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 act_layer: type[nn.Module] = nn.GELU, keep_rule: str = "apvit"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TokenPoolAttention(dim, num_heads, keep_rate=keep_rate, keep=keep, score=score,
                                       qkv_bias=qkv_bias, scale=scale, keep_rule=keep_rule)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_index(x)[0]

    def forward_with_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` that also returns the kept input-token indices (B, M), CLS (0) first; 0..N-1 when the
        block keeps every token (for models that map tokens back to positions; safe under torch.compile)."""
        y, index = self.attn(self.norm1(x))
        if self.attn.pools:  # static: a block that keeps every token never gathers
            x = gather_tokens(x, index)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x))), index


__all__ = ["PoolingBlock", "gather_tokens", "kept_positions"]
