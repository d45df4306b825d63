"""Quick timing of the C++/OpenMP ``cpu`` backend against the baselines at APViT shapes on this CPU. A script,
not a test: ``PYTHONPATH=. python bench/time_cpu_backend.py [--batch 8] [--threads 1 2] [--dtype float32 bfloat16]
[--compile]``. The pytest-benchmark suite (bench/test_ops.py) has the full comparison with every baseline.

Shapes: APP x (B, 768, 14, 14), k = 160, pos added, l1 score; ATP qkv (B, 161, 3, 8, 96), keep = 144,
logit_sum. ``fwd`` = the op; ``fwd+bwd`` = the op plus the backward pass to its inputs. Providers:

- ``cpu``: the fastfer op on the ``cpu`` backend (its OpenMP thread count is torch's, set by ``--threads``);
- ``torch``: fastfer's pure-PyTorch reference (fastfer/ops/reference.py, fp32 internally);
- ``eager``: the official-style code (bench/_baselines.py: full N×N attention, then select);
- ``sdpa``: ``F.scaled_dot_product_attention`` on all queries + CLS-row product + topk + sort + gather (ATP only);
- ``compile``: ``torch.compile`` of the eager baseline (``--compile``; slow to compile).

The providers run round-robin (``--reps`` rounds after warm-up). Each row prints every provider's median time
and the median over rounds of its time ÷ cpu's time in the same round (so > 1 means cpu is faster; robust to
load from other processes on a shared machine). The load average is printed per thread count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import fastfer
from bench import _baselines
from fastfer.ops import reference
from fastfer.ops.backends.ext import build as _ext

PROVIDERS = ("cpu", "torch", "eager", "sdpa", "compile")


def interleaved_ms(fns: dict, reps: int, clock=time.perf_counter) -> tuple[dict, dict]:
    """Median ms per provider, and the median over rounds of each provider's time ÷ cpu's time in the same
    round. The providers run round-robin, so a load spike from other work on the machine hits them alike."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    ratios = {name: statistics.median(t / c for t, c in zip(times[name], times["cpu"])) for name in fns}
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, ratios


def app_case(B: int, dtype: torch.dtype):
    x = torch.randn(B, 768, 14, 14).to(dtype)
    pos = torch.randn(196, 768).to(dtype)

    def make(impl, backward):
        def run():
            xi = x.detach().requires_grad_(backward)
            pi = pos.detach().requires_grad_(backward)
            tokens = impl(xi, pi)
            if backward:
                tokens.backward(torch.ones_like(tokens))
        return run

    eager = lambda xi, pi: _baselines.app_eager(xi, 160, pi, "l1")[0]  # noqa: E731
    impls = {
        "cpu": lambda xi, pi: fastfer.patch_pool(xi, 160, pos=pi, backend="cpu").tokens,
        "torch": lambda xi, pi: reference.patch_pool(xi, 160, pi, "l1")[0],
        "eager": eager,
    }
    return "APP", impls, make, eager


def atp_case(B: int, dtype: torch.dtype):
    qkv = torch.randn(B, 161, 3, 8, 96).to(dtype)
    scale = 96**-0.5

    def make(impl, backward):
        def run():
            qi = qkv.detach().requires_grad_(backward)
            out = impl(qi)
            if backward:
                out.backward(torch.ones_like(out))
        return run

    eager = lambda qi: _baselines.atp_eager(qi, 144, scale, "logit_sum")[0]  # noqa: E731
    impls = {
        "cpu": lambda qi: fastfer.token_pool_attention(qi, 144, backend="cpu").out,
        "torch": lambda qi: reference.token_pool_attention(qi, 144, None, "logit_sum")[0],
        "eager": eager,
        "sdpa": lambda qi: _baselines.atp_sdpa(qi, 144, scale, "logit_sum")[0],
    }
    return "ATP", impls, make, eager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the eager baseline")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="torch/OpenMP thread counts (default: torch's)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--ops", nargs="+", default=["APP", "ATP"], choices=("APP", "ATP"))
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: perf_counter; thread: CPU time of this thread (with --threads 1: the work "
                             "itself, unaffected by other processes competing for the cores)")
    args = parser.parse_args()
    thread_counts = args.threads or [torch.get_num_threads()]
    if args.clock == "thread" and thread_counts != [1]:
        parser.error("--clock thread measures one thread's CPU time: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    os.environ.setdefault("FASTFER_POISON", "0")
    module = _ext.load("cpu")
    print(f"torch {torch.__version__}, {args.clock} clock, extension: {_ext.describe('cpu')}, "
          f"kernels: {getattr(module, 'kernels', lambda: '?')()}")
    cases = {"APP": app_case, "ATP": atp_case}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n{threads} thread(s), load average {load:.2f}")
        print(f"{'case':<22}{'mode':<9}" + "".join(f"{p:>11}" for p in PROVIDERS) + "   speed-up of cpu")
        for dtype_name in args.dtype:
            dtype = getattr(torch, dtype_name)
            for B in args.batch:
                for op in args.ops:
                    torch.manual_seed(0)
                    name, impls, make, eager = cases[op](B, dtype)
                    if args.compile:
                        impls = {**impls, "compile": torch.compile(eager, dynamic=False)}
                    for backward in (False, True):
                        ms, ratio = interleaved_ms({p: make(f, backward) for p, f in impls.items()}, args.reps, clock)
                        ratios = ", ".join(f"{ratio[p]:.2f}x vs {p}" for p in ms if p != "cpu")
                        cells = "".join(f"{ms[p]:>9.2f}ms" if p in ms else f"{'-':>11}" for p in PROVIDERS)
                        label = f"{name} B={B} {dtype_name.replace('float', 'f').replace('bf', 'bf')}"
                        print(f"{label:<22}{'fwd+bwd' if backward else 'fwd':<9}{cells}   {ratios}", flush=True)


if __name__ == "__main__":
    main()
