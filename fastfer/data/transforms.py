"""Per-recipe image transforms (torchvision ``transforms.v2``).

Input: an RGB image as ``uint8 [3, H, W]`` tensor (what the readers return), a PIL image or an ``[H, W, 3]``
numpy array. Output: ``float32 [3, S, S]`` normalised tensor, ``S`` = the recipe's input size.

- ``apvit``: 112 px, ImageNet mean/std; train: rotate ±6° (p 0.5) → RandomResizedCrop(scale 0.8–1, ratio 1) →
  flip → grayscale 0.2 → ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (in RGB, not on BGR as the original) →
  normalise → RandomErasing p 0.5 (random values).
- ``fer_former``: 112 px, RAF-DB mean (0.5751, 0.4491, 0.4006) / std (0.2064, 0.1888, 0.1803); train: resize →
  grayscale 0.3 → flip → normalise → RandomErasing p 0.5 (zeros).
- ``conv_cut``: 224 px, ImageNet mean/std; train: resize → flip → RandomContrast factor in [0.7, 1.3] → normalise.

Test: resize to S×S, normalise. Where the original code resized with OpenCV / TF bilinear (APViT, Conv-cut) the
resize runs without antialiasing to stay close to it; FER-former resized PIL images (antialiased).
"""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAFDB_MEAN = (0.5751, 0.4491, 0.4006)
RAFDB_STD = (0.2064, 0.1888, 0.1803)

RECIPES = {
    "apvit": {"input_size": 112, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "fer_former": {"input_size": 112, "mean": RAFDB_MEAN, "std": RAFDB_STD},
    "conv_cut": {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
}


def recipe_name(recipe: str) -> str:
    key = str(recipe).strip().lower().replace("-", "_")
    key = {"ferformer": "fer_former", "convcut": "conv_cut"}.get(key, key)
    if key not in RECIPES:
        raise ValueError(f"recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    return key


def normalization(recipe: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the [0, 1] scale for a recipe (the same numbers go into a model's pretrained_cfg)."""
    cfg = RECIPES[recipe_name(recipe)]
    return cfg["mean"], cfg["std"]


class RandomContrast(nn.Module):
    """Keras ``RandomContrast(0.3)``: ``x = (x − mean_c) · k + mean_c`` per channel, ``k ~ U(lower, upper)``.

    Works on float images in [0, 1] (``[..., C, H, W]``; the mean is over H, W per channel) and clips to [0, 1].
    Keras draws one factor per batch; here each call (one image) draws its own.
    """

    def __init__(self, lower: float = 0.7, upper: float = 1.3):
        super().__init__()
        if not 0 <= lower <= upper:
            raise ValueError(f"RandomContrast: expected 0 ≤ lower ≤ upper, got lower={lower}, upper={upper}")
        self.lower, self.upper = lower, upper

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if not img.is_floating_point():
            raise TypeError(f"RandomContrast: expected a float image in [0, 1], got dtype {img.dtype}")
        k = torch.empty(()).uniform_(self.lower, self.upper).item()
        mean = img.mean(dim=(-2, -1), keepdim=True)
        out = ((img - mean) * k + mean).clamp_(0.0, 1.0)
        return out.as_subclass(type(img)) if type(img) is not torch.Tensor else out

    def extra_repr(self) -> str:
        return f"lower={self.lower}, upper={self.upper}"


def build_transforms(recipe: str, train: bool, input_size: int | None = None):
    """The train or test transform of ``recipe`` (``apvit``, ``fer_former``, ``conv_cut``) as a ``v2.Compose``.

    ``input_size`` overrides the recipe's side length (square output).
    """
    from torchvision.transforms import InterpolationMode, v2

    name = recipe_name(recipe)
    cfg = RECIPES[name]
    size = cfg["input_size"] if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"input_size: expected an int ≥ 8, got {input_size!r}")
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg["mean"], cfg["std"])]
    head = [v2.ToImage()]
    if not train:
        return v2.Compose(head + [v2.Resize((size, size), antialias=(name == "fer_former"))] + to_float)
    if name == "apvit":
        aug = [
            v2.RandomApply([v2.RandomRotation(6, interpolation=InterpolationMode.BILINEAR)], p=0.5),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(1.0, 1.0), antialias=False),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomGrayscale(0.2),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        ]
        tail = [v2.RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value="random")]
        return v2.Compose(head + aug + to_float + tail)
    if name == "fer_former":
        aug = [v2.Resize((size, size), antialias=True), v2.RandomGrayscale(0.3), v2.RandomHorizontalFlip(0.5)]
        return v2.Compose(head + aug + to_float + [v2.RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3))])
    # conv_cut: augmentation sits inside the Keras model, on the resized image, before ConvNeXt's normalisation
    aug = [v2.Resize((size, size), antialias=False), v2.RandomHorizontalFlip(0.5)]
    return v2.Compose(head + aug + [v2.ToDtype(torch.float32, scale=True), RandomContrast(0.7, 1.3),
                                    v2.Normalize(cfg["mean"], cfg["std"])])
