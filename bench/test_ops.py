"""Benchmarks of the fused ops against the baselines of docs/design.md §5.

For ``token_pool_attention`` (ATP) and ``patch_pool`` (APP), parametrised over shape (bench/_cases.py), batch,
dtype, mode (``fwd``; ``fwdbwd`` = forward + d(inputs) through autograd) and provider:

- ``eager``: the official-style computation (materialised logits, softmax, top-k, sort, gather);
- ``sdpa`` (ATP only): ``F.scaled_dot_product_attention`` + a CLS-row product + top-k + sort + gather;
- ``compile``: ``torch.compile`` of ``eager``;
- ``fastfer-<backend>``: ``fastfer.ops`` with ``backend=`` triton / cuda / cpu / torch (skipped, with the
  chooser's reasons, where it cannot run; the Triton interpreter on CPU only runs in smoke mode).

Each case first checks the provider's result against the fp32 reference (outside the timed region; this is
also the JIT / compile warm-up), then times it and records bytes, FLOPs, achieved GB/s and TFLOP/s and the
fraction of the measured hardware floor in ``extra_info``.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

import fastfer
from bench import _baselines, _cases
from bench._checks import check_attention, check_patch
from bench._harness import BenchConfig, annotate_roofline, device_median_seconds, run_benchmark
from bench._roofline import attention_cost, patch_cost
from fastfer.ops.backends import registry as _backends

ATTENTION_PROVIDERS = _cases.ATTENTION_BASELINES + tuple(f"fastfer-{b}" for b in _cases.FASTFER_BACKENDS)
PATCH_PROVIDERS = _cases.PATCH_BASELINES + tuple(f"fastfer-{b}" for b in _cases.FASTFER_BACKENDS)


def pytest_generate_tests(metafunc):
    cfg = BenchConfig.from_pytest(metafunc.config)
    attention, patch, batches, dtypes = _cases.SETS[cfg.shape_set]
    if "att_shape" in metafunc.fixturenames:
        metafunc.parametrize("att_shape", attention, ids=[s.name for s in attention])
    if "patch_shape" in metafunc.fixturenames:
        metafunc.parametrize("patch_shape", patch, ids=[s.name for s in patch])
    metafunc.parametrize("batch", batches, ids=[f"B{b}" for b in batches])
    metafunc.parametrize("dtype", dtypes, ids=[_cases.dtype_name(d) for d in dtypes])
    metafunc.parametrize("mode", _cases.MODES)
    providers = ATTENTION_PROVIDERS if "att_shape" in metafunc.fixturenames else PATCH_PROVIDERS
    metafunc.parametrize("provider", providers)


def fastfer_backend_or_skip(provider: str, op: str, cfg: BenchConfig, dtype: torch.dtype, head_dim=None) -> str:
    """The backend name of a ``fastfer-<backend>`` provider, or skip with the reason it cannot run here."""
    name = provider.removeprefix("fastfer-")
    registered = [row["name"] for row in fastfer.ops.backends()]
    if name not in registered:
        pytest.skip(f"fastfer backend {name!r} is not registered here (registered: {', '.join(registered)})")
    reasons = _backends.get(name).not_supported_reasons(_backends.Call(op, cfg.device, dtype, head_dim))
    if reasons:
        pytest.skip(f"fastfer backend {name!r} cannot run {op} on {cfg.device.type}/{dtype}: {'; '.join(reasons)}")
    if name in ("cpu", "cuda") and not _extension_ready(name):
        pytest.skip(f"fastfer's {name} extension is not built and benchmarks never JIT-build it (about a minute): "
                    f"build it first with fastfer.ops._ext.build({name!r}) (bench/README.md)")
    if name == "triton" and cfg.device.type == "cpu" and cfg.size == "full":
        pytest.skip("Triton on CPU runs in the interpreter: a test harness, not a speed path (smoke runs only)")
    return name


def _extension_ready(kind: str) -> bool:
    """Whether the C++/CUDA extension loads without compiling (prebuilt, or cached by an earlier build)."""
    try:
        from fastfer.ops.backends.ext import build as _ext
    except ImportError:
        return False
    return _ext.ready(kind)


def compiled(fn: Callable, cfg: BenchConfig) -> Callable:
    """torch.compile of fn with a clean Dynamo cache (each case compiles afresh: no recompile-limit fallbacks)."""
    torch._dynamo.reset()
    return torch.compile(fn, backend=cfg.compile_backend, dynamic=False)


def attention_provider(provider: str, cfg: BenchConfig, shape: _cases.AttentionShape, dtype, scale: float):
    """qkv → (out, index, cls_scores) for the provider."""
    keep, score = shape.keep, shape.score
    if provider == "eager":
        return lambda qkv: _baselines.atp_eager(qkv, keep, scale, score)
    if provider == "sdpa":
        return lambda qkv: _baselines.atp_sdpa(qkv, keep, scale, score)
    if provider == "compile":
        return compiled(lambda qkv: _baselines.atp_eager(qkv, keep, scale, score), cfg)
    backend = fastfer_backend_or_skip(provider, "token_pool_attention", cfg, dtype, head_dim=shape.D)
    return lambda qkv: fastfer.ops.token_pool_attention(qkv, keep, scale=scale, score=score, backend=backend)


def patch_provider(provider: str, cfg: BenchConfig, shape: _cases.PatchShape, dtype):
    """(x, pos) → (tokens, index, scores) for the provider."""
    if provider == "eager":
        return lambda x, pos: _baselines.app_eager(x, shape.k, pos)
    if provider == "compile":
        return compiled(lambda x, pos: _baselines.app_eager(x, shape.k, pos), cfg)
    backend = fastfer_backend_or_skip(provider, "patch_pool", cfg, dtype)
    return lambda x, pos: fastfer.ops.patch_pool(x, shape.k, pos=pos, score="l1", backend=backend)


def describe(benchmark, op: str, case: str, batch: int, dtype, mode: str, provider: str, **fields) -> None:
    benchmark.group = f"{op} {case} B={batch} {_cases.dtype_name(dtype)} {mode}"
    benchmark.extra_info.update(
        op=op, case=case, batch=batch, dtype=_cases.dtype_name(dtype), mode=mode, provider=provider, **fields
    )


def test_token_pool_attention(benchmark, bench_config, hardware_floor, att_shape, batch, dtype, mode, provider):
    cfg, s = bench_config, att_shape
    scale = s.D**-0.5
    fn = attention_provider(provider, cfg, s, dtype, scale)
    describe(benchmark, "token_pool_attention", s.name, batch, dtype, mode, provider,
             N=s.N, H=s.H, D=s.D, keep=s.keep, score=s.score)
    qkv = torch.randn(batch, s.N, 3, s.H, s.D, device=cfg.device, dtype=dtype, requires_grad=mode == "fwdbwd")
    grad_out = torch.randn(batch, s.M, s.H * s.D, device=cfg.device, dtype=dtype) if mode == "fwdbwd" else None

    def call():
        out = fn(qkv)[0]
        return out if grad_out is None else torch.autograd.grad(out, qkv, grad_out)

    out, index, _ = fn(qkv)  # correctness first (also the compile / JIT warm-up)
    grad = torch.autograd.grad(out, qkv, grad_out)[0] if grad_out is not None else None
    check_attention(qkv.detach(), s.keep, scale, s.score, out.detach(), index, grad_out, grad)

    run_benchmark(benchmark, call, cfg)
    device_s = device_median_seconds(call, cfg.device) if cfg.timed else None
    annotate_roofline(benchmark, attention_cost(s, batch, dtype, mode), hardware_floor, dtype, device_s)


def test_patch_pool(benchmark, bench_config, hardware_floor, patch_shape, batch, dtype, mode, provider):
    cfg, s = bench_config, patch_shape
    fn = patch_provider(provider, cfg, s, dtype)
    describe(benchmark, "patch_pool", s.name, batch, dtype, mode, provider, C=s.C, N=s.N, k=s.k, score="l1")
    needs_grad = mode == "fwdbwd"
    x = torch.randn(batch, s.C, s.side, s.side, device=cfg.device, dtype=dtype, requires_grad=needs_grad)
    pos = (0.02 * torch.randn(s.N, s.C, device=cfg.device, dtype=dtype)).requires_grad_(needs_grad)
    grad_tokens = torch.randn(batch, s.k, s.C, device=cfg.device, dtype=dtype) if needs_grad else None

    def call():
        tokens = fn(x, pos)[0]
        return tokens if grad_tokens is None else torch.autograd.grad(tokens, (x, pos), grad_tokens)

    tokens, index, _ = fn(x, pos)
    grads = torch.autograd.grad(tokens, (x, pos), grad_tokens) if needs_grad else None
    check_patch(x.detach(), s.k, pos.detach(), tokens.detach(), index, grad_tokens, grads)

    run_benchmark(benchmark, call, cfg)
    device_s = device_median_seconds(call, cfg.device) if cfg.timed else None
    annotate_roofline(benchmark, patch_cost(s, batch, dtype, mode), hardware_floor, dtype, device_s)
