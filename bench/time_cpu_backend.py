"""Quick timing of the C++/OpenMP ``cpu`` backend against the PyTorch reference (and ``torch.compile`` of it)
at APViT shapes on this CPU. A script, not a test: ``python bench/time_cpu_backend.py [--batch 8 32]
[--compile]``. The pytest-benchmark suite (bench/test_ops.py) has the full comparison with every baseline.

Shapes: APP x (B, 768, 14, 14), k = 160, pos added, l1 score; ATP qkv (B, 161, 3, 8, 96), keep = 144,
logit_sum. ``fwd`` = the op; ``fwd+bwd`` = the op plus the backward pass to its inputs. The providers run round-robin
(``--reps`` rounds after warm-up); prints each one's median time and the median over rounds of its time ÷
cpu's time in the same round (robust to load from other processes on a shared machine). Builds the
extension first if needed (about a minute, once).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends.ext import build as _ext


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


def app_case(B: int):
    x = torch.randn(B, 768, 14, 14)
    pos = torch.randn(196, 768)

    def make(impl, backward):
        def run():
            xi = x.detach().requires_grad_(backward)
            pi = pos.detach().requires_grad_(backward)
            tokens = impl(xi, pi)
            if backward:
                tokens.backward(torch.ones_like(tokens))
        return run

    impls = {
        "cpu": lambda xi, pi: fastfer.patch_pool(xi, 160, pos=pi, backend="cpu").tokens,
        "torch": lambda xi, pi: reference.patch_pool(xi, 160, pi, "l1")[0],
    }
    return "APP", impls, make, lambda xi, pi: reference.patch_pool(xi, 160, pi, "l1")[0]


def atp_case(B: int):
    qkv = torch.randn(B, 161, 3, 8, 96)

    def make(impl, backward):
        def run():
            qi = qkv.detach().requires_grad_(backward)
            out = impl(qi)
            if backward:
                out.backward(torch.ones_like(out))
        return run

    impls = {
        "cpu": lambda qi: fastfer.token_pool_attention(qi, 144, backend="cpu").out,
        "torch": lambda qi: reference.token_pool_attention(qi, 144, None, "logit_sum")[0],
    }
    return "ATP", impls, make, lambda qi: reference.token_pool_attention(qi, 144, None, "logit_sum")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the reference (slow to compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: perf_counter; thread: CPU time of this thread (with --threads 1: the work "
                             "itself, unaffected by other processes competing for the cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and torch.get_num_threads() != 1:
        parser.error("--clock thread measures one thread's CPU time: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    os.environ.setdefault("FASTFER_POISON", "0")
    _ext.load("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, load average {load:.1f}, "
          f"extension: {_ext.describe('cpu')}")
    print(f"{'case':<18}{'mode':<9}" + "".join(f"{p:>11}" for p in ("cpu", "torch", "compile")) + "   speed-up of cpu")
    torch.manual_seed(0)
    for B in args.batch:
        for case in (app_case, atp_case):
            name, impls, make, ref = case(B)
            if args.compile:
                impls = {**impls, "compile": torch.compile(ref, dynamic=False)}
            for backward in (False, True):
                ms, ratio = interleaved_ms({p: make(f, backward) for p, f in impls.items()}, args.reps, clock)
                ratios = ", ".join(f"{ratio[p]:.2f}x vs {p}" for p in ms if p != "cpu")
                cells = "".join(f"{ms[p]:>9.2f}ms" if p in ms else f"{'-':>11}" for p in ("cpu", "torch", "compile"))
                print(f"{name + ' B=' + str(B):<18}{'fwd+bwd' if backward else 'fwd':<9}{cells}   {ratios}")


if __name__ == "__main__":
    main()
