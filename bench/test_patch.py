"""fastfer.patch on timm ViT-S / DeiT-S: patched vs unpatched, one inference batch and one train step.

Providers (``extra_info.provider``; rows land in the report's model table, ratios against ``torch-fp32`` /
``torch-amp`` = the unpatched timm model, whose attention is PyTorch SDPA):

- ``torch-fp32`` / ``torch-amp``: the unpatched timm model (fp32 on CPU, bf16 autocast on CUDA);
- ``patched-<dtype>``: ``fastfer.patch(model, keep_rates={3: 1.0, 6: 1.0, 9: 1.0})`` — fused attention in every
  block, nothing dropped;
- ``patched-<dtype>-keep0.7``: the same with rate 0.7 at blocks 3/6/9 (EViT's DeiT-S schedule: 197 → 139 →
  98 → 69 tokens at 224²).

The fused layers use the backend fastfer's chooser picks on the device (``extra_info.backend``: triton or cuda
on a GPU; on a CPU the C++ ``cpu`` backend when built, else the ``torch`` reference). Smoke runs use 32²
inputs (5 tokens), B = 2 and 48-channel models; every case first checks the model's output (keep 1.0 against
the unpatched logits).
"""
from __future__ import annotations

import copy
import functools

import torch

from bench._harness import BenchConfig, median_seconds, run_benchmark
from bench._models import Provider, build_runner, logits_of

MODELS = ("vit_small_patch16_224", "deit_small_patch16_224")
POOL_LAYERS = (3, 6, 9)
NUM_CLASSES = 7
VARIANTS = {"unpatched": None, "patched": 1.0, "patched-keep0.7": 0.7}  # name → rate at POOL_LAYERS
SHAPES = {  # shape set → (input side, (task, batch) cases)
    "smoke": (32, (("train", 2), ("infer", 2))),
    "cpu": (224, (("train", 4), ("infer", 8))),
    "gpu": (224, (("train", 64), ("infer", 128), ("infer", 1))),
}
# Smoke runs check the harness in seconds: all 12 blocks, but 48 channels (6 heads of 8) instead of 384.
SMOKE_MODEL_KWARGS = dict(embed_dim=48)


def pytest_generate_tests(metafunc):
    cfg = BenchConfig.from_pytest(metafunc.config)
    _, cases = SHAPES[cfg.shape_set]
    metafunc.parametrize("model_name", MODELS)
    metafunc.parametrize("task,batch", cases, ids=[f"{t}-B{b}" for t, b in cases])
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


def test_patch(benchmark, bench_config, model_name, task, batch, variant):
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
        report = patch(model, keep_rates={layer: rate for layer in POOL_LAYERS})
        backend = chosen_backend(cfg.device, torch.bfloat16 if amp else torch.float32)
    images = torch.randn(batch, 3, side, side, device=cfg.device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=cfg.device)
    _check(model, base, images, rate, amp)

    provider = Provider(provider_name(variant, amp), fused=rate is not None, amp=amp, compile=False, graphs=False)
    runner = build_runner(model, task, provider, images, labels)
    n_tokens = (side // 16) ** 2 + 1
    benchmark.group = f"patch {model_name} {task} B={batch}"
    benchmark.extra_info.update(
        op="model", case=model_name, model=model_name, task=task, batch=batch, provider=provider.name,
        backend=backend or "timm (SDPA)", dtype="bf16-amp" if amp else "fp32", mode=task, input_size=side,
        keep_rates={layer: rate for layer in POOL_LAYERS} if rate is not None else None,
        tokens_per_block=report.token_counts(n_tokens) if report else [n_tokens] * len(model.blocks),
    )
    run_benchmark(benchmark, runner.fn, cfg)
    runner.check()
    median = median_seconds(benchmark)
    if median is not None:
        benchmark.extra_info["img_per_s"] = batch / median


def _check(model: torch.nn.Module, base: torch.nn.Module, images: torch.Tensor, rate: float | None, amp: bool) -> None:
    """Outside the timing: finite logits; with nothing dropped, the unpatched model's logits (fp32 only)."""
    with torch.no_grad():
        logits = logits_of(model.eval()(images[:2]))
        assert bool(torch.isfinite(logits.float()).all()), "patched model: logits are not finite"
        if rate == 1.0 and not amp:
            expected = copy.deepcopy(base).to(images.device)(images[:2])
            torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)
