"""The smoke step of bench/gpu_check.py: every Triton kernel at the model shapes, B = 1, bf16 / fp16 / fp32.

For each case and backend (``triton``; ``cuda`` too when its extension is already built):

- errors of cls_scores, out, d(qkv) (APP: scores, tokens, d(x), d(pos)) against an fp64 reference by the
  project's rule — at most 2× the error of PyTorch in the same precision (+1e-5 relative floor) — and a
  valid selection; outputs are poisoned (NaN / -1) before the kernels run (FASTFER_POISON=1);
- ten repeats of forward + backward bitwise identical (three in the dry run);
- every autotuning candidate forced once (the check above, per candidate), so a candidate autotuning did not
  pick cannot hide a miscompile;
- per-kernel times: the launches of one forward + backward are recorded and each replayed under
  ``triton.testing.do_bench`` (CUDA events, L2 flushed);
- registers, spills, shared memory and warps read from the compiled kernels triton actually launched;
- a CUDA-graph replay of the APViT forward at B = 1 (bf16 autocast), checked against the eager forward;
- the 64 + 32 head-dim split against one padded 128-wide dot (APViT b4, B = 128, bf16), timed both ways.

The dry run (CPU, interpreter) does the same at tiny shapes in fp32/fp16, without timings, compiled-kernel
statistics or graphs (reported as skipped).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch

import fastfer
from fastfer.ops import reference

DTYPES_GPU = ("bf16", "fp16", "fp32", "fp32-tf32")
DTYPES_CPU = ("fp32", "fp16")
_TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp32-tf32": torch.float32}
FLOOR = 1e-5


@contextlib.contextmanager
def _env(name: str, value: str):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _rule(actual, ref64, low) -> dict:
    err = (actual.double() - ref64).abs().nan_to_num(float("inf")).max().item() if actual.numel() else 0.0
    base = (low.double() - ref64).abs().nan_to_num(0.0).max().item() if low.numel() else 0.0
    allowed = 2 * base + FLOOR * max(1.0, ref64.abs().max().item() if ref64.numel() else 1.0)
    return dict(err=err, allowed=allowed, ok=bool(err <= allowed))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


def _selection_ok(scores64, index, k) -> bool:
    """Ascending unique positions and no dropped score above a kept one beyond the fp32 score error."""
    if not bool((index.diff(dim=1) > 0).all()):
        return False
    kept = torch.zeros_like(scores64, dtype=torch.bool).scatter_(1, index, True)
    s = scores64.nan_to_num(float("-inf"))
    worst_kept = s.masked_fill(~kept, float("inf")).amin(1)
    best_dropped = s.masked_fill(kept, float("-inf")).amax(1)
    tol = 1e-4 * s.abs().nan_to_num(0).amax(1) + 1e-6
    return bool((best_dropped <= worst_kept + tol).all())


# --- one attention / patch case ------------------------------------------------------------------------------


def attention_case(case, B, tag, backend, device, repeats=10) -> dict:
    from tests.ops.helpers import cls_scores64, eager_attend, eager_cls_scores

    dtype = _TORCH_DTYPE[tag]
    torch.manual_seed(case.N * case.D)
    qkv = torch.randn(B, case.N, 3, case.H, case.D, device=device).to(dtype)
    scale = case.D**-0.5

    def run():
        q = qkv.clone().requires_grad_()
        out, index, scores = fastfer.token_pool_attention(q, case.keep, scale=scale, score=case.score, backend=backend)
        grad = torch.ones_like(out).normal_(generator=torch.Generator(device).manual_seed(7))
        (dq,) = torch.autograd.grad(out, q, grad)
        return out, index, scores, dq, grad

    out, index, scores, dq, grad = run()
    checks = {"cls_scores": _rule(scores, cls_scores64(qkv, scale, case.score), eager_cls_scores(qkv, scale, case.score))}
    if case.keep is not None:
        checks["index"] = dict(ok=bool((index[:, 0] == 0).all())
                               and _selection_ok(cls_scores64(qkv, scale, case.score)[:, 1:], index[:, 1:] - 1, case.keep))
    q64 = qkv.double().requires_grad_()
    ref_out, _ = reference.attend(q64, index, scale)
    (ref_dq,) = torch.autograd.grad(ref_out, q64, grad.double())
    ql = qkv.clone().requires_grad_()
    low_out = eager_attend(ql, index, scale)
    (low_dq,) = torch.autograd.grad(low_out, ql, grad)
    checks["out"] = _rule(out, ref_out.detach(), low_out.detach())
    for slot, name in enumerate("qkv"):
        checks[f"d{name}"] = _rule(dq[:, :, slot], ref_dq[:, :, slot], low_dq[:, :, slot])
    same = all(all(torch.equal(_bits(a), _bits(b)) for a, b in zip(run()[:4], (out, index, scores, dq)))
               for _ in range(repeats - 1))
    return dict(checks=checks, repeat_bitwise=same, fn=lambda: run())


def patch_case(case, B, tag, backend, device, repeats=10) -> dict:
    from tests.ops.helpers import eager_patch_pool

    dtype = _TORCH_DTYPE[tag]
    torch.manual_seed(case.k)
    x = torch.randn(B, case.C, case.side, case.side, device=device).to(dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pos = (0.02 * torch.randn(case.side * case.side, case.C, device=device)).to(dtype)

    def run():
        x1, p1 = x.clone().requires_grad_(), pos.clone().requires_grad_()
        tokens, index, scores = fastfer.patch_pool(x1, case.k, pos=p1, score="l1", backend=backend)
        grad = torch.ones_like(tokens).normal_(generator=torch.Generator(device).manual_seed(7))
        gx, gpos = torch.autograd.grad(tokens, (x1, p1), grad)
        return tokens, index, scores, gx, gpos, grad

    tokens, index, scores, gx, gpos, grad = run()
    as_tok = reference.as_tokens(x)
    exact = as_tok.double().abs().sum(-1)
    low_tokens, low_scores = eager_patch_pool(as_tok, index, pos, "l1")
    checks = {"scores": _rule(scores, exact, low_scores), "index": dict(ok=_selection_ok(exact, index, case.k))}
    x64, p64 = x.double().requires_grad_(), pos.double().requires_grad_()
    ref = reference.gather_tokens(reference.as_tokens(x64), index, p64)
    rx, rpos = torch.autograd.grad(ref, (x64, p64), grad.double())
    xl, pl = x.clone().requires_grad_(), pos.clone().requires_grad_()
    low = eager_patch_pool(reference.as_tokens(xl), index, pl, "l1")[0]
    lx, lpos = torch.autograd.grad(low, (xl, pl), grad)
    checks["tokens"] = _rule(tokens, ref.detach(), low_tokens)
    checks["d_x"] = _rule(gx, rx, lx)
    checks["d_pos"] = _rule(gpos, rpos, lpos)
    same = all(all(torch.equal(_bits(a), _bits(b)) for a, b in zip(run()[:5], (tokens, index, scores, gx, gpos)))
               for _ in range(repeats - 1))
    return dict(checks=checks, repeat_bitwise=same, fn=lambda: run())


# --- timings and compiled-kernel statistics ------------------------------------------------------------------


def kernel_times(fn, device) -> dict:
    """ms per Triton launch of one ``fn()``: its launches are recorded, replayed in order once (valid
    intermediates: scores → index → attention; lse → backward), then each timed — ``do_bench`` on a GPU (CUDA
    events, L2 flushed), one host-timed call in the interpreter."""
    from fastfer.ops.backends.triton import runtime

    launches = []
    with runtime.record_launches(lambda *launch: launches.append(launch)):
        fn()

    def replay(launch):
        tunable, grid, args, constexprs, family = launch
        tunable.launch(grid, args, constexprs, family)

    for launch in launches:
        replay(launch)
    times: dict[str, float] = {}
    for launch in launches:
        name = launch[0].name
        times[name] = round(times.get(name, 0.0) + op_time_ms(lambda: replay(launch), device), 5)
    return times


def op_time_ms(fn, device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=25, return_mode="median"))


def compiled_kernels() -> list[dict]:
    """Registers, spills, shared memory and warps of every kernel triton compiled in this process."""
    from fastfer.ops.backends.triton import runtime

    rows = []
    for name, tunable in runtime.TUNABLES.items():
        for value in getattr(tunable.kernel, "device_caches", {}).values():
            cache = value[0] if isinstance(value, tuple) else value
            for kernel in list(cache.values()):
                with contextlib.suppress(Exception):
                    kernel._init_handles()
                md = kernel.metadata
                consts = getattr(kernel.src, "constants", {}) or {}
                names = getattr(getattr(kernel.src, "fn", None), "arg_names", [])
                blocks = {names[k[0]]: v for k, v in consts.items() if isinstance(k, tuple) and k and k[0] < len(names)
                          and names[k[0]].startswith("BLOCK_")}
                rows.append(dict(kernel=name, blocks=blocks, warps=md.num_warps, stages=getattr(md, "num_stages", None),
                                 regs=getattr(kernel, "n_regs", None), spills=getattr(kernel, "n_spills", None),
                                 shared=md.shared))
    return rows


def autotune_choices() -> dict:
    from fastfer.ops.backends.triton import runtime

    out = {}
    for name, tunable in runtime.TUNABLES.items():
        for family, tuner in tunable.tuners.items():
            for key, cfg in getattr(tuner, "cache", {}).items():
                out[f"{name} {family} {key}"] = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def every_candidate(run_case, fn, device) -> list[dict]:
    """Force candidate i of every kernel the case launches (i = 0, 1, ...) and rerun the case's checks, so every
    autotuning candidate is checked once on the GPU."""
    from fastfer.ops.backends.triton import runtime

    launches = []
    with runtime.record_launches(lambda *launch: launches.append(launch)):
        fn()
    kernels = {launch[0].name: (launch[0], launch[4]) for launch in launches}
    results = []
    for i in range(max((len(t.candidates(f)) for t, f in kernels.values()), default=0)):
        forced = {name: list(t.candidates(f))[i] for name, (t, f) in kernels.items() if i < len(t.candidates(f))}
        with runtime.force_configs(forced):
            res = run_case()
        results.append(dict(candidate=i, ok=all(c["ok"] for c in res["checks"].values()),
                            configs={name: str(cfg) for name, cfg in forced.items()}))
    return results


def graph_replay(device, dry_run: bool) -> dict:
    """APViT forward at B = 1 under bf16 autocast, eager vs CUDA-graph replay (ms, CUDA events)."""
    if device.type != "cuda":
        return dict(skipped="CUDA graphs need a GPU")
    with _env("FASTFER_POISON", "0"):
        return _graph_replay(device, dry_run)


def _graph_replay(device, dry_run: bool) -> dict:
    model = fastfer.create_model("apvit_tiny" if dry_run else "apvit", num_classes=7).to(device).eval()
    side = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 112, 112))[-1])
    static = torch.randn(1, 3, side, side, device=device)
    with fastfer.use_backend("triton"), torch.no_grad(), torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
        eager = model(static).float()
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(3):
                model(static)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(static)
        graph.replay()
        torch.cuda.synchronize(device)
        diff = (captured.float() - eager).abs().max().item()

        def timed(fn, reps=50):
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)

        return dict(graph_ms=timed(graph.replay), eager_ms=timed(lambda: model(static)), max_abs_diff=diff,
                    ok=bool(diff <= 1e-2 * max(1.0, eager.abs().max().item())))


def head_split_ab(device, dry_run: bool) -> dict:
    """APViT b4 attention (B = 128, bf16): the 64 + 32 head-dim split against one 128-wide padded dot, forward
    and forward + backward (do_bench ms), so the split's gain is measured, not assumed."""
    if device.type != "cuda":
        return dict(skipped="timed on a GPU only")
    qkv = torch.randn(128, 161, 3, 8, 96, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(128, 145, 8 * 96, device=device, dtype=torch.bfloat16)

    def fwd():
        return fastfer.token_pool_attention(qkv, 144, backend="triton").out

    def fwdbwd():
        return torch.autograd.grad(fwd(), qkv, grad)

    out = {}
    with _env("FASTFER_POISON", "0"):
        for split in ("1", "0"):
            with _env("FASTFER_TRITON_SPLIT_D", split):
                fwdbwd()  # compile / autotune outside the timing
                name = "split_64_32" if split == "1" else "padded_128"
                out[name] = dict(fwd_ms=op_time_ms(fwd, device), fwdbwd_ms=op_time_ms(fwdbwd, device))
    return out


def prewarm_compile_cache(jobs: int, timeout: float, log=print) -> str:
    """Compile every kernel config of the model shapes in ``jobs`` parallel processes (tools/static_gate.py
    --prewarm), so this step and the later ones load compiled kernels from triton's cache instead of compiling
    about a hundred of them one after another."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(root / "tools" / "static_gate.py"), "--prewarm", f"{i}/{jobs}"],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(jobs)]
    notes = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
            notes.append(out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            notes.append("timed out")
    text = f"prewarm: {jobs} processes, {time.perf_counter() - start:.0f} s ({'; '.join(notes[:2])} ...)"
    log("  " + text)
    return text


def run(dry_run: bool, log=print) -> dict:
    """The smoke step; returns the JSON-able result (``ok`` false when any check failed)."""
    from bench import _cases
    from fastfer.ops.backends.triton import runtime
    from tools import static_gate

    device = torch.device("cpu" if dry_run else "cuda")
    repeats = 3 if dry_run else 10  # bitwise-identical repeats (the dry run checks the plumbing)
    if dry_run:
        att = [static_gate.AttentionCase(s.name, s.N, s.H, s.D, s.keep, s.score) for s in _cases.SMOKE_ATTENTION]
        patch = [static_gate.PatchCase(s.name, s.C, s.side, s.k) for s in _cases.SMOKE_PATCH]
        tags = DTYPES_CPU
    else:
        att, patch, tags = static_gate.attention_cases(), static_gate.patch_cases(), DTYPES_GPU
    backends = ["triton"]
    if not dry_run:
        from fastfer.ops.backends.ext import build as _ext

        if _ext.ready("cuda"):
            backends.append("cuda")
    prewarm = None
    if not dry_run:
        prewarm = prewarm_compile_cache(max(1, min(12, (os.cpu_count() or 2) - 2)), timeout=60.0, log=log)
    cases, failures = [], []
    for tag in tags:
        for backend in backends:
            if tag == "fp32-tf32" and backend == "cuda":
                continue  # the CUDA kernels have no TF32 path
            with runtime.tf32_matmuls(tag == "fp32-tf32"):
                for kind, items in (("attention", att), ("patch", patch if tag != "fp32-tf32" else [])):
                    for case in items:
                        label = f"{case.name} B=1 {tag} {backend}"
                        runner = attention_case if kind == "attention" else patch_case
                        start = time.perf_counter()
                        try:
                            res = runner(case, 1, tag, backend, device, repeats)
                        except Exception as exc:  # noqa: BLE001 — recorded, the step goes on
                            cases.append(dict(case=label, error=f"{type(exc).__name__}: {exc}"[:500]))
                            failures.append(label)
                            log(f"  ERROR {label}: {type(exc).__name__}: {exc}")
                            continue
                        fn = res.pop("fn")
                        with _env("FASTFER_POISON", "0"):
                            res["op_ms"] = op_time_ms(fn, device)
                            res["kernel_ms"] = kernel_times(fn, device) if backend == "triton" else {}
                        if tag != "fp32-tf32" and backend == "triton" and case.name in ("apvit_b4", "ferformer",
                                                                                          "apvit_app", "tiny_pool"):
                            res["candidates"] = every_candidate(lambda: runner(case, 1, tag, backend, device, 1), fn,
                                                                device)
                        informational = tag == "fp32-tf32"  # TF32 error is not bounded by the fp32 eager baseline
                        ok = all(c["ok"] for c in res["checks"].values()) and res["repeat_bitwise"] and all(
                            c["ok"] for c in res.get("candidates", []))
                        res.update(case=label, ok=ok, informational=informational,
                                   seconds=round(time.perf_counter() - start, 2))
                        if not ok and not informational:
                            failures.append(label)
                        cases.append(res)
                        worst = max((c.get("err", 0) / c["allowed"] for c in res["checks"].values() if "allowed" in c),
                                    default=0.0)
                        log(f"  {'ok  ' if ok else 'FAIL'} {label:<36} worst err/allowed {worst:.2f}  "
                            f"bitwise {res['repeat_bitwise']}  {res['op_ms']:.3f} ms")
    kernels = compiled_kernels()
    spilling = [k for k in kernels if k["spills"]]
    graphs = graph_replay(device, dry_run)
    split_ab = head_split_ab(device, dry_run)
    if graphs.get("ok") is False:
        failures.append("apvit graph replay")
    return dict(ok=not failures and not spilling, failures=failures, spilling=spilling, cases=cases, kernels=kernels,
                autotune=autotune_choices(), graph=graphs, head_split=split_ab, prewarm=prewarm)
