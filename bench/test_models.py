"""Model benchmarks: APViT, FER-former and Conv-cut, one train step and one inference batch per provider.

Records img/s and peak CUDA memory (``extra_info``) for the providers of bench/_models.py: ``torch-fp32`` (the
official-style baseline), ``torch-amp``, ``torch-amp-compile``, ``fused-amp``, ``fused-amp-compile`` and,
for inference on a GPU, ``torch-amp-graphs`` / ``fused-amp-graphs``. Models come from
``fastfer.create_model(name, num_classes=7)`` under ``fastfer.use_backend(...)``; while a model is not registered its cases are
skipped with the reason. GPU runs use the full models, CPU and smoke runs the small variants
(override with ``--bench-models=name1,name2``).
"""
from __future__ import annotations

import functools
import gc

import pytest
import torch

import fastfer
from bench._harness import BenchConfig, median_seconds, run_benchmark
from bench._models import PROVIDERS, NotApplicable, Provider, build_runner, fused_backend, peak_memory_mib

NUM_CLASSES = 7
# family → (full model, small CPU variant, input side when the model's pretrained_cfg does not say)
FAMILIES = {
    "apvit": ("apvit", "apvit_tiny", 112),
    "fer_former": ("fer_former", "fer_former_tiny", 112),
    "conv_cut": ("conv_cut", "conv_cut_tiny", 224),
}
# Smoke runs (the CI check, ≤ 90 s for all of bench/ on 2 CPU cores) build each model twice: the baseline and
# the fused path. AMP, compile and CUDA-graph handling is covered on a toy model in tests/bench, and measured
# on the real models by full runs.
SMOKE_PROVIDERS = ("torch-fp32", "fused-amp")
TASK_BATCHES = {  # shape set → (task, batch) cases
    "gpu": (("train", 64), ("infer", 128), ("infer", 1)),
    "cpu": (("train", 8), ("infer", 8), ("infer", 1)),
    "smoke": (("train", 2), ("infer", 2)),
}


def model_names(cfg: BenchConfig, option: str) -> list[str]:
    if option.strip():
        return [n.strip() for n in option.split(",") if n.strip()]
    pick = 0 if cfg.shape_set == "gpu" else 1
    return [names[pick] for names in FAMILIES.values()]


def pytest_generate_tests(metafunc):
    cfg = BenchConfig.from_pytest(metafunc.config)
    names = model_names(cfg, metafunc.config.getoption("bench_models", "") or "")
    metafunc.parametrize("model_name", names)
    cases = TASK_BATCHES[cfg.shape_set]
    metafunc.parametrize("task,batch", cases, ids=[f"{t}-B{b}" for t, b in cases])
    metafunc.parametrize("provider", SMOKE_PROVIDERS if cfg.size == "smoke" else PROVIDERS)


def model_factory():
    """``fastfer.create_model``, else ``fastfer.models.create_model`` (before the top-level alias lands), else None."""
    create = getattr(fastfer, "create_model", None)
    if create is None:
        try:
            import fastfer.models as models
        except ImportError:
            return None
        create = getattr(models, "create_model", None)
    return create


@functools.lru_cache(maxsize=None)
def registered(name: str) -> str | None:
    """None when fastfer can build ``name``, else why not."""
    if model_factory() is None:
        return "fastfer.create_model does not exist yet (fastfer/models has not landed)"
    import timm

    if not timm.is_model(name):
        ours = [n for n in timm.list_models() if _ours(n)]
        return f"model {name!r} is not registered yet (fastfer models: {ours or 'none'})"
    return None


def _ours(name: str) -> bool:
    return any(name.startswith(family) for family in FAMILIES)


def input_side(model: torch.nn.Module, name: str) -> int:
    pcfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = pcfg.get("input_size") if isinstance(pcfg, dict) else None
    if size:
        return int(size[-1])
    return next(side for family, (_, _, side) in FAMILIES.items() if name.startswith(family))


@pytest.fixture
def _release_memory():
    yield
    if torch.cuda.is_available():  # free the last case's model before the next one allocates its own
        gc.collect()
        torch.cuda.empty_cache()


def test_model(benchmark, bench_config, _release_memory, model_name, task, batch, provider):
    cfg = bench_config
    why = registered(model_name)
    if why:
        pytest.skip(why)
    spec = Provider.parse(provider)
    try:
        backend = fused_backend(cfg.device) if spec.fused else "torch"
        model = model_factory()(model_name, num_classes=NUM_CLASSES).to(cfg.device)
        side = input_side(model, model_name)
        images = torch.randn(batch, 3, side, side, device=cfg.device)
        labels = torch.randint(0, NUM_CLASSES, (batch,), device=cfg.device)
        runner = build_runner(model, task, spec, images, labels, compile_backend=cfg.compile_backend)
    except NotApplicable as reason:
        pytest.skip(str(reason))

    benchmark.group = f"model {model_name} {task} B={batch}"
    benchmark.extra_info.update(
        op="model", case=model_name, model=model_name, task=task, batch=batch, provider=provider, backend=backend,
        dtype="bf16-amp" if spec.amp else "fp32", mode=task, input_size=side, channels_last=spec.channels_last,
        compile_backend=cfg.compile_backend if spec.compile else None,
        params=sum(p.numel() for p in model.parameters()),
    )
    with fastfer.use_backend(backend):  # the benchmark is the entry point: it pins the provider's backend
        run_benchmark(benchmark, runner.fn, cfg)  # warm-up (compile, JIT) happens in there, outside the timing
        runner.check()
    median = median_seconds(benchmark)
    if median is not None:
        benchmark.extra_info["img_per_s"] = batch / median
    if cfg.timed:
        with fastfer.use_backend(backend):
            benchmark.extra_info["peak_mem_mib"] = peak_memory_mib(runner.fn, cfg.device)
