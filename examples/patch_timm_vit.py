"""Patch a timm ViT-S with fastfer: same outputs, optional EViT-style token pooling, speed before and after.

    python examples/patch_timm_vit.py                          # random weights, CPU
    python examples/patch_timm_vit.py --device cuda --dtype bfloat16 --batch 128
    python examples/patch_timm_vit.py --checkpoint vit_s.safetensors   # your local weights (nothing downloads)

Steps: time the unpatched model; ``fastfer.patch(model)`` (fused attention, same parameters) and compare
logits; ``fastfer.patch(model, keep_rates={3: r, 6: r, 9: r})`` (pooling) and time it; ``fastfer.unpatch``
restores the original modules, checked bit for bit.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import fastfer
from fastfer.nn import patch, unpatch


def timed(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Median seconds of one no-grad forward (after one warm-up call)."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if images.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(images)
            if images.is_cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="a timm vit_*/deit_* name")
    parser.add_argument("--checkpoint", default=None, help="local state_dict (.safetensors or .pth) to load")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--keep-rate", type=float, default=0.7, help="pooling rate at blocks 3, 6, 9")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--backend", default=None, help="fastfer op backend (default: automatic)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = timm.create_model(args.model, pretrained=False, img_size=args.img_size,
                              checkpoint_path=args.checkpoint or "").eval().to(args.device, dtype)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device, dtype=dtype)
    with torch.no_grad():
        before = model(images)
    t_timm = timed(model, images, args.repeats)

    if args.backend:
        fastfer.set_backend(args.backend)  # the patched layers take no backend: pin one for the ops
    report = patch(model)
    with torch.no_grad():
        fused = model(images)
    t_fused = timed(model, images, args.repeats)
    print(report)
    print(f"max |logits(patched) - logits(timm)| = {(fused - before).abs().max().item():.2e}")
    unpatch(model)

    rate = args.keep_rate
    report = patch(model, keep_rates={3: rate, 6: rate, 9: rate})
    t_pooled = timed(model, images, args.repeats)
    n_tokens = (args.img_size // 16) ** 2 + 1
    print(f"pooling {rate} at blocks 3/6/9: tokens per block {report.token_counts(n_tokens)}")
    unpatch(model)
    with torch.no_grad():
        restored = torch.equal(model(images), before)
    print(f"unpatch restored the original outputs exactly: {restored}")

    result = {name: args.batch / t for name, t in
              (("timm", t_timm), ("patched", t_fused), (f"patched+pool{rate}", t_pooled))}
    for name, ips in result.items():
        print(f"{name:<18} {ips:8.1f} img/s  ({ips / result['timm']:.2f}× timm)")
    return result


if __name__ == "__main__":
    main()
