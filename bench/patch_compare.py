"""Side-by-side timing of ``fastfer.patch`` on a timm DeiT-S / ViT-S against the unpatched model, one process.

    PYTHONPATH=$PWD python -m bench.patch_compare [--model deit_small_patch16_224] [--batch 8] [--threads 1 2]
        [--rounds 7] [--backends auto torch cpu] [--tasks infer train]

Every round runs each variant once (interleaved, so machine load hits all of them alike); the table shows the
median time per variant and its ratio to the unpatched model (> 1 = the patched model is faster). Variants:
``unpatched`` (timm, SDPA attention), ``off`` (``patch(model)``: fused attention, no pooling) and ``keep0.7``
(``patch(model, keep_rates={3: .7, 6: .7, 9: .7})``), each patched variant under every requested op backend
(``auto`` = fastfer's automatic choice). Inference runs under ``torch.inference_mode``; a train step is forward,
cross-entropy, backward and an SGD step.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

POOL_LAYERS = (3, 6, 9)
NUM_CLASSES = 7


def build_variants(name: str, side: int, backends: list[str]) -> dict[str, tuple[torch.nn.Module, str | None]]:
    """{variant name: (model, op backend or None for automatic)}; every model is a copy of one random init."""
    import timm

    from fastfer.nn import patch

    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, img_size=side, num_classes=NUM_CLASSES)
    variants = {"unpatched": (base, None)}
    for backend in backends:
        for label, rates in (("off", None), ("keep0.7", {layer: 0.7 for layer in POOL_LAYERS})):
            model = copy.deepcopy(base)
            patch(model, keep_rates=rates)
            variants[f"{label}[{backend}]"] = (model, None if backend == "auto" else backend)
    return variants


def step_fn(model: torch.nn.Module, task: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    if task == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(images)

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train() -> None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def compare(name: str, batch: int, threads: int, task: str, backends: list[str], rounds: int, side: int = 224
            ) -> dict[str, float]:
    """Median seconds per variant, interleaved rounds (after one warm-up call each)."""
    import fastfer

    torch.set_num_threads(threads)
    variants = build_variants(name, side, backends)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, side, side, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    fns = {}
    for label, (model, backend) in variants.items():
        fn = step_fn(model, task, images, labels)
        fns[label] = (fn, backend)
    times: dict[str, list[float]] = {label: [] for label in fns}
    for r in range(rounds + 1):
        for label, (fn, backend) in fns.items():
            with fastfer.ops.use_backend(backend):
                t0 = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t0
            if r:  # round 0 is the warm-up
                times[label].append(elapsed)
    return {label: statistics.median(ts) for label, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backends", nargs="+", default=["auto"])
    parser.add_argument("--tasks", nargs="+", default=["infer", "train"])
    args = parser.parse_args()
    import os

    print(f"# {args.model} B={args.batch} fp32, load {os.getloadavg()[0]:.2f}")
    for task in args.tasks:
        for threads in args.threads:
            med = compare(args.model, args.batch, threads, task, args.backends, args.rounds)
            base = med["unpatched"]
            cells = "  ".join(f"{label} {1e3 * t:7.1f} ms ({base / t:4.2f}x)" for label, t in med.items())
            print(f"{task:5} threads={threads}: {cells}  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
