"""fastfer.patch on timm ViT-S / DeiT-S: patched vs unpatched, one inference batch and one train step.

Providers (``extra_info.provider``; rows land in the report's model table, ratios against ``torch-fp32`` /
``torch-amp`` = the unpatched timm model, whose attention is PyTorch SDPA):

- ``torch-fp32`` / ``torch-amp``: the unpatched timm model (fp32 on CPU, bf16 autocast on CUDA);
- ``patched-<dtype>``: ``fastfer.patch(model)`` — fused attention in every block, pooling off;
- ``patched-<dtype>-keep0.7``: ``fastfer.patch(model, keep_rates={3: .7, 6: .7, 9: .7})`` (EViT's DeiT-S
  schedule: 197 → 139 → 98 → 69 tokens at 224²).

The fused layers use fastfer's automatic choice on the device (``extra_info.backend``: triton or cuda on a GPU;
on a CPU the ATen composition for plain attention, and for pooling the C++ ``cpu`` backend when built, else the
ATen composition). On a CPU every case runs at 1 and at 2 threads (``extra_info.threads``); train and
inference use B = 8 there (the issue-16 targets: pooling off ≥ 1.0×, keep 0.7 ≥ 1.6× the unpatched model).

Ratios, side by side: each timed patched case also times the unpatched model in the same process, alternating
the two step by step (ABBA rounds, so machine load hits both alike), and stores
``extra_info.speedup_vs_unpatched`` (median time unpatched / patched; > 1 = patched faster) with the rounds'
min-time ratio and ``target``; ``bench/report.py`` also divides the pytest-benchmark medians of the group.
Smoke runs use 32² inputs (5 tokens), B = 2 and 48-channel models; every case first checks the model's output
(pooling off against the unpatched logits).
"""
from __future__ import annotations

import copy
import functools
import statistics
import time
from typing import Callable

import pytest
import torch

from bench._harness import BenchConfig, median_seconds, run_benchmark, synchronizing
from bench._models import Provider, build_runner, logits_of

MODELS = ("vit_small_patch16_224", "deit_small_patch16_224")
POOL_LAYERS = (3, 6, 9)
NUM_CLASSES = 7
VARIANTS = {"unpatched": None, "patched": 1.0, "patched-keep0.7": 0.7}  # name → rate at POOL_LAYERS (1.0 = off)
TARGETS = {1.0: 1.0, 0.7: 1.6}  # issue 16: speedup over the unpatched model each variant must reach
SHAPES = {  # shape set → (input side, (task, batch) cases)
    "smoke": (32, (("train", 2), ("infer", 2))),
    "cpu": (224, (("train", 8), ("infer", 8))),
    "gpu": (224, (("train", 64), ("infer", 128), ("infer", 1))),
}
THREADS = {"cpu": (1, 2)}  # CPU intra-op threads per case (other shape sets: torch's default)
RATIO_ROUNDS = 6  # interleaved rounds of each model for speedup_vs_unpatched (after one warm-up call each)
# Smoke runs check the harness in seconds: all 12 blocks, but 48 channels (6 heads of 8) instead of 384.
SMOKE_MODEL_KWARGS = dict(embed_dim=48)


def pytest_generate_tests(metafunc):
    cfg = BenchConfig.from_pytest(metafunc.config)
    _, cases = SHAPES[cfg.shape_set]
    metafunc.parametrize("model_name", MODELS)
    metafunc.parametrize("task,batch", cases, ids=[f"{t}-B{b}" for t, b in cases])
    threads = THREADS.get(cfg.shape_set, (None,))
    metafunc.parametrize("threads", threads, ids=[f"t{t}" if t else "tdefault" for t in threads])
    metafunc.parametrize("variant", list(VARIANTS))


@functools.lru_cache(maxsize=2)
def prototype(name: str, side: int, smoke: bool) -> torch.nn.Module:
    """One randomly initialised model per name (ViT-S init takes a while); cases deep-copy it."""
    import timm

    torch.manual_seed(0)
    kwargs = SMOKE_MODEL_KWARGS if smoke else {}
    return timm.create_model(name, pretrained=False, img_size=side, num_classes=NUM_CLASSES, **kwargs).eval()


def provider_name(variant: str, amp: bool) -> str:
    dtype = "amp" if amp else "fp32"
    return f"torch-{dtype}" if variant == "unpatched" else variant.replace("patched", f"patched-{dtype}")


def chosen_backend(device: torch.device, dtype: torch.dtype) -> str:
    from fastfer.ops.backends import registry as _backends

    return _backends.select(_backends.Call("token_pool_attention", device, dtype, head_dim=64)).name


@pytest.fixture
def num_threads(threads):
    """torch's intra-op thread count for the case (restored afterwards)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def test_patch(benchmark, bench_config, model_name, task, batch, variant, num_threads):
    from fastfer.nn import patch

    cfg = bench_config
    side, _ = SHAPES[cfg.shape_set]
    amp = cfg.device.type == "cuda"  # bf16 autocast on GPU, fp32 on CPU (as bench/test_models.py)
    rate = VARIANTS[variant]
    base = prototype(model_name, side, cfg.size == "smoke")
    model = copy.deepcopy(base).to(cfg.device)
    backend = None
    report = None
    if rate is not None:
        report = patch(model, keep_rates=None if rate == 1.0 else {layer: rate for layer in POOL_LAYERS})
        backend = chosen_backend(cfg.device, torch.bfloat16 if amp else torch.float32)
    images = torch.randn(batch, 3, side, side, device=cfg.device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=cfg.device)
    _check(model, base, images, rate, amp)

    provider = Provider(provider_name(variant, amp), fused=rate is not None, amp=amp, compile=False, graphs=False)
    runner = build_runner(model, task, provider, images, labels)
    n_tokens = (side // 16) ** 2 + 1
    benchmark.group = f"patch {model_name} {task} B={batch} threads={num_threads}"
    benchmark.extra_info.update(
        op="model", case=model_name, model=model_name, task=task, batch=batch, provider=provider.name,
        backend=backend or "timm (SDPA)", dtype="bf16-amp" if amp else "fp32", mode=task, input_size=side,
        threads=num_threads, keep_rates={layer: rate for layer in POOL_LAYERS} if rate not in (None, 1.0) else None,
        tokens_per_block=report.token_counts(n_tokens) if report else [n_tokens] * len(model.blocks),
    )
    run_benchmark(benchmark, runner.fn, cfg)
    runner.check()
    median = median_seconds(benchmark)
    if median is not None:
        benchmark.extra_info["img_per_s"] = batch / median
    if rate is not None and cfg.timed:
        unpatched = copy.deepcopy(base).to(cfg.device)
        plain = Provider(provider_name("unpatched", amp), fused=False, amp=amp, compile=False, graphs=False)
        reference = build_runner(unpatched, task, plain, images, labels)
        ratios = interleaved_speedup(synchronizing(reference.fn, cfg.device), synchronizing(runner.fn, cfg.device))
        benchmark.extra_info.update(ratios, target=TARGETS[rate])


def interleaved_speedup(reference: Callable[[], object], fn: Callable[[], object], rounds: int = RATIO_ROUNDS
                        ) -> dict[str, float]:
    """Time ``reference`` and ``fn`` alternately (ABBA order, one warm-up call each) in this process.

    Returns ``speedup_vs_unpatched`` (median reference time / median fn time), ``speedup_vs_unpatched_min``
    (the same with each one's fastest round: the least loaded estimate) and both medians in seconds.
    """
    times: dict[int, list[float]] = {0: [], 1: []}
    pair = (reference, fn)
    for f in pair:
        f()
    for r in range(rounds):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            pair[which]()
            times[which].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(speedup_vs_unpatched=med[0] / med[1], speedup_vs_unpatched_min=min(times[0]) / min(times[1]),
                unpatched_median_s=med[0], patched_median_s=med[1], ratio_rounds=rounds)


def _check(model: torch.nn.Module, base: torch.nn.Module, images: torch.Tensor, rate: float | None, amp: bool) -> None:
    """Outside the timing: finite logits; with nothing dropped, the unpatched model's logits (fp32 only)."""
    with torch.no_grad():
        logits = logits_of(model.eval()(images[:2]))
        assert bool(torch.isfinite(logits.float()).all()), "patched model: logits are not finite"
        if rate == 1.0 and not amp:  # pooling off: the unpatched model's logits
            expected = copy.deepcopy(base).to(images.device)(images[:2])
            torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)
