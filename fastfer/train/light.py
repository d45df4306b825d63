"""The demo augmentation (``transform="light"``) for one image or a whole batch at once.

Train: random translation by up to ``size/16`` pixels with edge padding (the crop of an edge-padded image) and a
horizontal flip with probability 0.5; test: nothing. Both resize to ``size`` first when the image has another
size, then scale to [0, 1] and normalise.

Why a batch path: on a 2-core CPU the per-sample torchvision pipeline cost about 3 ms per 64² image, 0.2 s of CPU
per batch of 64 in the loader worker, more than the model's own step at 2 threads, with the worker competing for
the cores the step uses (measured; see the README's main job). The batch path draws the same random choices and
moves the pixels with one gather: about 1 ms per batch, in the main process, no worker.

Every random choice of a sample comes from torch's generator, drawn in torchvision's order (the crop's top, its
left, then the flip: ``RandomCrop`` then ``RandomHorizontalFlip``): the global one for
:meth:`LightTransform.__call__` (which :class:`fastfer.train.data.Augmented` seeds with the sample's seed) or a
``torch.Generator`` seeded per sample in :meth:`LightTransform.batch`. So a seeded sample gets the same pixels
through either path as through the torchvision pipeline this replaced, and a run trains exactly as before,
only faster (tested bitwise).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchvision.transforms import v2


class LightTransform:
    """uint8 ``(3, H, W)`` image (tensor or PIL) → normalised float32 ``(3, size, size)``; :meth:`batch` does the
    same for uint8 ``(B, 3, H, W)`` with one seed per sample."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool):
        self.size, self.train = int(size), bool(train)
        self.pad = max(self.size // 16, 1)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __repr__(self) -> str:
        return (f"LightTransform(size={self.size}, train={self.train}, pad={self.pad}, mean={self.mean}, "
                f"std={self.std})")

    def draw(self, generator: Optional[torch.Generator] = None) -> tuple[int, int, bool]:
        """(top, left, flip) of one sample from ``generator`` (None: torch's global one), as torchvision draws
        them."""
        span = 2 * self.pad + 1
        top = int(torch.randint(0, span, size=(), generator=generator))
        left = int(torch.randint(0, span, size=(), generator=generator))
        return top, left, bool(torch.rand(1, generator=generator) < 0.5)

    def __call__(self, img) -> torch.Tensor:
        x = self._as_uint8_batch(img[None] if isinstance(img, torch.Tensor) else img, "image")
        draws = [self.draw()] if self.train else None
        return self._finish(x, draws)[0]

    def batch(self, images: torch.Tensor, seeds: Sequence[Optional[int]]) -> torch.Tensor:
        """``images`` uint8 ``(B, 3, H, W)``, ``seeds`` one int (or None: torch's global generator) per image →
        float32 ``(B, 3, size, size)``."""
        x = self._as_uint8_batch(images, "images")
        if len(seeds) != x.shape[0]:
            raise ValueError(f"seeds: expected one per image ({x.shape[0]}), got {len(seeds)}")
        draws = None
        if self.train:
            draws = [self.draw(None if s is None else torch.Generator().manual_seed(int(s))) for s in seeds]
        return self._finish(x, draws)

    # --- internals -----------------------------------------------------------------------------------------------

    def _as_uint8_batch(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # PIL image (or array): torchvision's conversion
            x = v2.functional.to_image(x)[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name}: expected 3-channel images (B, 3, H, W) / (3, H, W), got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"{name}: expected uint8 pixels, got {x.dtype}")
        if x.shape[-2:] != (self.size, self.size):
            x = v2.functional.resize(x, [self.size, self.size], antialias=True)
        return x

    def _finish(self, x: torch.Tensor, draws) -> torch.Tensor:
        if draws is not None:
            x = self._shift_flip(x, draws)
        x = v2.functional.to_dtype(x, torch.float32, scale=True)
        return v2.functional.normalize(x, self.mean, self.std)

    def _shift_flip(self, x: torch.Tensor, draws) -> torch.Tensor:
        """out[b, :, i, j] = x[b, :, clamp(top + i − pad), clamp(left + j' − pad)], j' = size−1−j when flipped:
        the crop at (top, left) of the edge-padded image, then the flip."""
        b, s = x.shape[0], self.size
        top = torch.tensor([d[0] for d in draws]).view(b, 1)
        left = torch.tensor([d[1] for d in draws]).view(b, 1)
        flip = torch.tensor([d[2] for d in draws]).view(b, 1)
        ar = torch.arange(s).view(1, s)
        rows = (top + ar - self.pad).clamp_(0, s - 1)
        cols = torch.where(flip, left + (s - 1 - ar), left + ar) - self.pad
        cols = cols.clamp_(0, s - 1)
        x = torch.gather(x, 2, rows.view(b, 1, s, 1).expand(b, 3, s, s))
        return torch.gather(x, 3, cols.view(b, 1, 1, s).expand(b, 3, s, s))
