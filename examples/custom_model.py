"""Build your own token-pooling model from fastfer.nn and train it a few steps.

The model: a small conv stem → AttentivePatchPool keeps the k most active positions of its feature map (APViT
APP) → a CLS token → PoolingBlocks, two of which drop tokens by CLS attention (APViT ATP) → linear head. It
trains on synthetic 10-class images (a square whose colour is the class, at a random place: APP has to find
it), so the loss visibly falls within a few dozen steps on a CPU, and prints which patches survive each pooling stage.

    python examples/custom_model.py --steps 30
    python examples/custom_model.py --device cuda --backend triton
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastfer
from fastfer.nn import AttentivePatchPool, PoolingBlock, kept_positions


class TinyPoolingViT(nn.Module):
    """images (B, 3, 32, 32) → logits (B, num_classes); 64 positions → keep 48 → 37 tokens after the blocks."""

    def __init__(self, num_classes: int = 10, dim: int = 64, heads: int = 4, keep: int = 48,
                 rates: tuple = (None, 0.75, None, 0.75)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.GELU())  # 32² → 8×8 map of dim channels
        self.pool = AttentivePatchPool(keep, score="l1")
        self.pos = nn.Parameter(torch.randn(64, dim) * 0.02)  # one per map position, gathered with the tokens
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[PoolingBlock(dim, heads, mlp_ratio=2.0, qkv_bias=True, keep_rate=r,
                                                   score="logit_sum") for r in rates])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.pool(self.stem(images), pos=self.pos)  # (B, keep, dim)
        x = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


COLOURS = torch.randn(10, 3, generator=torch.Generator().manual_seed(123)) * 2  # one colour per class


def synthetic_batch(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noise images with a coloured 8×8 square at a random place; its colour (of 10) is the label."""
    labels = torch.randint(0, len(COLOURS), (batch,), generator=generator)
    images = torch.randn(batch, 3, 32, 32, generator=generator) * 0.5
    corners = torch.randint(0, 25, (batch, 2), generator=generator).tolist()
    for i, label in enumerate(labels.tolist()):
        row, col = corners[i]
        images[i, :, row:row + 8, col:col + 8] += COLOURS[label][:, None, None]
    return images, labels


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None, help="fastfer op backend (triton, cuda, cpu, torch; default auto)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if args.backend:
        fastfer.set_backend(args.backend)  # layers take no backend: the ops choose one, or the one pinned here
    model = TinyPoolingViT().to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start, losses = time.perf_counter(), []
    for step in range(args.steps):
        images, labels = synthetic_batch(args.batch, generator)
        loss = F.cross_entropy(model(images.to(args.device)), labels.to(args.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:>3}  loss {loss.item():.3f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s; loss {losses[0]:.3f} → {losses[-1]:.3f}")

    # Which map positions survived: APP's choice, then each block's kept tokens (1 = first APP token).
    app = model.pool.last_index[0].tolist()
    print(f"APP kept {len(app)}/64 map positions, e.g. {app[:8]} ...")
    for i, pos in enumerate(kept_positions([b.attn.last_index for b in model.blocks])):
        print(f"block {i}: {pos.shape[1]} tokens leave (CLS + {pos.shape[1] - 1})")
    return losses[-1]


if __name__ == "__main__":
    main()
