"""Side-by-side timing of ``fastfer.patch`` on a timm DeiT-S / ViT-S against the unpatched model, one process.

    PYTHONPATH=$PWD python -m bench.patch_compare [--model deit_small_patch16_224] [--batch 8] [--threads 1 2]
        [--rounds 7] [--backends auto torch cpu] [--tasks infer train]

Every round runs the unpatched model, each variant once, then the unpatched model again; a variant's ratio in a
round is the mean of the two unpatched times over its own time (> 1 = the patched model is faster), so load
that changes over seconds hits both sides of each ratio alike. The table shows each variant's median time, the
median of its per-round ratios (with their range) and the ratio of the fastest rounds. Variants:
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
            ) -> dict[str, dict[str, float]]:
    """{variant: {"median_s", "ratio" (median of paired per-round ratios), "ratio_lo", "ratio_hi", "ratio_min_time"}}
    after one warm-up call of each model; the unpatched model's row has ratio 1."""
    import fastfer

    torch.set_num_threads(threads)
    variants = build_variants(name, side, backends)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, side, side, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    fns = {label: (step_fn(model, task, images, labels), backend) for label, (model, backend) in variants.items()}

    def timed(label: str) -> float:
        fn, backend = fns[label]
        with fastfer.ops.use_backend(backend):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    for label in fns:
        timed(label)  # warm-up
    base: list[float] = []
    times: dict[str, list[float]] = {label: [] for label in fns if label != "unpatched"}
    ratios: dict[str, list[float]] = {label: [] for label in times}
    for _ in range(rounds):
        before = timed("unpatched")
        current = {label: timed(label) for label in times}
        after = timed("unpatched")
        base += [before, after]
        for label, t in current.items():
            times[label].append(t)
            ratios[label].append((before + after) / 2 / t)
    rows = {"unpatched": dict(median_s=statistics.median(base), ratio=1.0, ratio_lo=1.0, ratio_hi=1.0,
                              ratio_min_time=1.0)}
    for label, ts in times.items():
        rows[label] = dict(median_s=statistics.median(ts), ratio=statistics.median(ratios[label]),
                           ratio_lo=min(ratios[label]), ratio_hi=max(ratios[label]), ratio_min_time=min(base) / min(ts))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backends", nargs="+", default=["auto"])
    parser.add_argument("--tasks", nargs="+", default=["infer", "train"])
    parser.add_argument("--side", type=int, default=224, help="input size (32 for a quick check)")
    args = parser.parse_args()
    import os

    print(f"# {args.model} B={args.batch} fp32, load {os.getloadavg()[0]:.2f}")
    for task in args.tasks:
        for threads in args.threads:
            rows = compare(args.model, args.batch, threads, task, args.backends, args.rounds, args.side)
            cells = "  ".join(f"{label} {1e3 * r['median_s']:7.1f} ms {r['ratio']:4.2f}x "
                              f"[{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}, fastest {r['ratio_min_time']:.2f}x]"
                              for label, r in rows.items())
            print(f"{task:5} threads={threads}: {cells}  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
