"""One-command GPU validation of fastfer's kernels: ``bench/gpu_check.sh OUTDIR`` (= ``python -m bench.gpu_check
OUTDIR`` from the source tree with PYTHONPATH=.).

Five steps, each in its own subprocess with its own timeout (a failure, crash or timeout is recorded and the
next step runs), inside an overall budget (default 470 s, for the < 8 minute goal on one H100/H200):

=========  ===========================================================================  =====================
step       what                                                                         files in OUTDIR
=========  ===========================================================================  =====================
facts      GPU, driver, SM count, versions, backends; measured copy bandwidth, bf16 GEMM  facts.json
smoke      every Triton kernel at the model shapes, B = 1, bf16/fp16/fp32 (+TF32): 2×    smoke.json
           rule vs fp64, poisoned outputs, 10 bitwise repeats, every autotune candidate,
           per-kernel do_bench times, registers/spills/smem of the compiled kernels,
           CUDA-graph replay of the APViT forward at B = 1 (bench/_gpu_smoke.py)
tests      the CUDA-marked tests and the op test files on the GPU (pytest, junit)          tests-junit.xml
bench      headline benchmarks: APViT b4 ATP + APP, bf16, eager / sdpa / compile /        bench.json, bench.md
           fastfer (≈ 20 cases, poisoning off) and the rendered report
models     apvit train step and inference at B = 128, bf16: fused + compile vs the       models.json
           official-style eager fp32 and vs torch.compile of the reference ops; peak MiB
=========  ===========================================================================  =====================

plus ``summary.md`` (the table printed last) and ``log.txt`` (every step's output): at most 8 files.

``--dry-run`` runs the same steps on CPU (Triton interpreter, tiny shapes, smoke benchmarks, a tiny model) in
well under a minute; tests/bench/test_gpu_check.py runs it so the script cannot rot. ``--only smoke,bench``
runs some steps. Exit status 0 when every step passed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "GPU_CHECK_RESULT "
MODEL_PROVIDERS = ("torch-fp32", "fused-amp", "fused-amp-compile", "torch-amp-compile")
DRY_MODEL_PROVIDERS = ("torch-fp32", "fused-amp-compile")


@dataclass
class StepResult:
    name: str
    status: str = "ok"  # ok | failed | timeout | error | skipped
    seconds: float = 0.0
    summary: list[str] = field(default_factory=list)
    log: str = ""


# --- running children with a timeout ------------------------------------------------------------------------


def _child_env(dry_run: bool, poison: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FASTFER_POISON"] = "1" if poison else "0"
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU even on a GPU machine
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def run_child(cmd: list[str], timeout: float, env: dict) -> tuple[int | None, str, float]:
    """(returncode or None on timeout, combined output, seconds); a timed-out child's process group is killed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (pytest, compile workers)
        out, _ = proc.communicate()
        code = None
    return code, out or "", time.perf_counter() - start


def _python_step(name: str, out_dir: Path, dry_run: bool, timeout: float, poison: bool) -> StepResult:
    cmd = [sys.executable, "-m", "bench.gpu_check", "--step", name, str(out_dir)] + (["--dry-run"] if dry_run else [])
    code, log, seconds = run_child(cmd, timeout, _child_env(dry_run, poison))
    res = StepResult(name, seconds=seconds, log=log)
    payload = next((json.loads(line[len(RESULT_TAG):]) for line in reversed(log.splitlines())
                    if line.startswith(RESULT_TAG)), None)
    if code is None:
        res.status = "timeout"
    elif payload is None or code != 0 and payload.get("ok", False):
        res.status = "error"
        res.summary.append(log.strip().splitlines()[-1][:200] if log.strip() else f"exit {code}")
    else:
        res.status = "ok" if payload.get("ok") else "failed"
    if payload is not None:
        res.summary.extend(payload.get("summary", []))
    return res


# --- in-child step bodies ----------------------------------------------------------------------------------


def _emit(payload: dict) -> None:
    print(RESULT_TAG + json.dumps(payload), flush=True)


def step_facts(out_dir: Path, dry_run: bool) -> dict:
    import torch

    from bench._harness import software_info
    from bench._roofline import HardwareFloor

    device = torch.device("cpu" if dry_run else "cuda")
    info = software_info(device)
    floor = HardwareFloor(device, small=dry_run)
    gemm_dtype = torch.bfloat16
    info.update(copy_gbps=round(floor.copy_gbps, 1), copy_buffer_mib=floor.copy_bytes >> 20,
                gemm_bf16_tflops=round(floor.gemm_tflops(gemm_dtype), 4))
    (out_dir / "facts.json").write_text(json.dumps(info, indent=1, default=str))
    gpu = f"{info.get('gpu_name', 'CPU')}, {info.get('gpu_sms', '-')} SMs, driver {info.get('nvidia_driver', '-')}"
    return dict(ok=True, summary=[gpu, f"torch {info['torch']}, triton {info['triton']}",
                                  f"copy {info['copy_gbps']:.0f} GB/s, bf16 GEMM {info['gemm_bf16_tflops']:.1f} TFLOP/s"])


def step_smoke(out_dir: Path, dry_run: bool) -> dict:
    from bench import _gpu_smoke

    result = _gpu_smoke.run(dry_run)
    (out_dir / "smoke.json").write_text(json.dumps(result, indent=1, default=str))
    cases = result["cases"]
    summary = [f"{sum(1 for c in cases if c.get('ok'))}/{len(cases)} cases pass "
               f"({sum(1 for c in cases if c.get('informational'))} TF32 cases informational)"]
    if result["failures"]:
        summary.append("failed: " + ", ".join(result["failures"][:8]))
    kernels = result["kernels"]
    if kernels:
        worst = max(kernels, key=lambda k: k["regs"] or 0)
        summary.append(f"{len(kernels)} compiled kernels, {len(result['spilling'])} spilling; max regs "
                       f"{worst['regs']} ({worst['kernel']})")
    graph = result["graph"]
    summary.append(f"apvit B=1 CUDA graph {graph['graph_ms']:.2f} ms (eager {graph['eager_ms']:.2f} ms)"
                   if "graph_ms" in graph else f"graph replay: {graph.get('skipped', graph)}")
    split = result.get("head_split", {})
    if "split_64_32" in split:
        a, b = split["split_64_32"], split["padded_128"]
        summary.append(f"D=96 split 64+32 vs padded 128: fwd {a['fwd_ms']:.3f} vs {b['fwd_ms']:.3f} ms, "
                       f"fwd+bwd {a['fwdbwd_ms']:.3f} vs {b['fwdbwd_ms']:.3f} ms")
    return dict(ok=result["ok"], summary=summary)


def _median_ms(fn, device, reps: int) -> float:
    import torch

    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def step_models(out_dir: Path, dry_run: bool) -> dict:
    import torch

    import fastfer
    from bench._models import NotApplicable, Provider, build_runner, fused_backend, peak_memory_mib

    device = torch.device("cpu" if dry_run else "cuda")
    name, batch = ("apvit_tiny", 2) if dry_run else ("apvit", 128)
    compile_backend = "eager" if dry_run else "inductor"  # dry run: Dynamo capture only
    results: list[dict] = []
    path = out_dir / "models.json"
    model = runner = images = None
    for task in ("train", "infer"):
        for provider in DRY_MODEL_PROVIDERS if dry_run else MODEL_PROVIDERS:
            spec = Provider.parse(provider)
            row = dict(model=name, task=task, batch=batch, provider=provider)
            start = time.perf_counter()
            try:
                # The interpreter runs no bf16 (AMP's dtype): the dry run checks the step's plumbing on the reference.
                backend = fused_backend(device) if spec.fused and not dry_run else "torch"
                torch.manual_seed(0)
                model = fastfer.create_model(name, num_classes=7).to(device)
                side = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 112, 112))[-1])
                images = torch.randn(batch, 3, side, side, device=device)
                labels = torch.randint(0, 7, (batch,), device=device)
                runner = build_runner(model, task, spec, images, labels, compile_backend=compile_backend)
                with fastfer.use_backend(backend):
                    for _ in range(1 if dry_run else 3):  # compile, JIT, autotune
                        runner.fn()
                    runner.check()
                    row.update(backend=backend, median_ms=_median_ms(runner.fn, device, 1 if dry_run else 10),
                               peak_mib=peak_memory_mib(runner.fn, device))
                row["img_per_s"] = batch / (row["median_ms"] / 1e3)
            except NotApplicable as why:
                row["skipped"] = str(why)
            except Exception as exc:  # noqa: BLE001 — recorded; the other providers still run
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            row["seconds"] = round(time.perf_counter() - start, 1)
            results.append(row)
            path.write_text(json.dumps(results, indent=1))  # partial results survive a timeout
            print(f"  {task} {provider}: {row.get('median_ms', row.get('skipped', row.get('error')))}", flush=True)
            model = runner = images = None  # free this case before the next one measures its peak memory
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary = []
    for task in ("train", "infer"):
        by = {r["provider"]: r for r in results if r["task"] == task and "median_ms" in r}
        fused = by.get("fused-amp-compile") or by.get("fused-amp")
        if fused:
            peak = f"{fused['peak_mib']:.0f} MiB" if fused['peak_mib'] else "peak n/a"
            parts = [f"{task} B={batch} {fused['provider']} {fused['median_ms']:.1f} ms, {peak}"]
            for base in ("torch-fp32", "torch-amp-compile"):
                if base in by:
                    parts.append(f"{by[base]['median_ms'] / fused['median_ms']:.2f}× {base}")
            summary.append("; ".join(parts))
    errors = [f"{r['task']} {r['provider']}: {r['error']}" for r in results if "error" in r]
    return dict(ok=not errors, summary=summary + errors[:3])


STEP_BODIES = {"facts": step_facts, "smoke": step_smoke, "models": step_models}


# --- pytest steps ------------------------------------------------------------------------------------------


def _cuda_test_files() -> list[str]:
    """Test files with CUDA-marked tests, plus the op test files (they run on the GPU through the device fixture)."""
    marked = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                    if "mark.cuda" in p.read_text(errors="ignore"))
    ops = ["tests/ops/test_token_pool.py", "tests/ops/test_patch_pool.py", "tests/ops/test_cuda_backend.py",
           "tests/ops/test_compile.py"]
    return marked + [f for f in ops if f not in marked]


def step_tests(out_dir: Path, dry_run: bool, timeout: float) -> StepResult:
    junit = out_dir / "tests-junit.xml"
    files = ["tests/ops/test_cuda.py"] if dry_run else _cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}", *files]
    env = _child_env(dry_run, poison=True)
    env["FASTFER_TRITON_AUTOTUNE"] = "0"  # dozens of test shapes: first candidate only (smoke checks them all)
    code, log, seconds = run_child(cmd, timeout, env)
    res = StepResult("tests", seconds=seconds, log=log)
    if code is None:
        res.status = "timeout"
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, skipped = int(suite.get("tests")), int(suite.get("skipped"))
        failed = int(suite.get("failures")) + int(suite.get("errors"))
        res.summary.append(f"{total} tests: {total - skipped - failed} passed, {failed} failed, {skipped} skipped")
        res.summary += [f"FAIL {c.get('classname')}.{c.get('name')}" for c in suite.iter("testcase")
                        if c.find("failure") is not None or c.find("error") is not None][:6]
        if code is not None:
            res.status = "ok" if failed == 0 and code in (0, 5) else "failed"
    elif code is not None:
        res.status = "error"
        res.summary.append(f"pytest exited {code} without a junit file")
    return res


BENCH_GPU = ("(apvit_b4-B128-bf16 or apvit_app-B128-bf16 or apvit_b4-B1-bf16-fwd-) and "
             "(eager or sdpa or compile or fastfer-triton or fastfer-cuda)")
BENCH_DRY = "(tiny_pool-B2-fp32 or tiny_app-B2-fp32) and (eager or sdpa or compile or fastfer-triton)"


def step_bench(out_dir: Path, dry_run: bool, timeout: float) -> StepResult:
    data, report = out_dir / "bench.json", out_dir / "bench.md"
    size = ["--bench-size=smoke"] if dry_run else ["--benchmark-only", "--benchmark-max-time=0.25",
                                                   "--benchmark-min-rounds=5"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/test_ops.py", *size,
           "-k", BENCH_DRY if dry_run else BENCH_GPU, f"--benchmark-json={data}"]
    start = time.perf_counter()
    code, log, _ = run_child(cmd, timeout, _child_env(dry_run, poison=False))
    res = StepResult("bench", log=log)
    if code is None:
        res.status = "timeout"
    elif code != 0:
        res.status = "failed"
        res.summary += [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))][:5]
    if data.exists():
        left = max(10.0, timeout - (time.perf_counter() - start))
        rcode, rlog, _ = run_child([sys.executable, "-m", "bench.report", str(data), "-o", str(report), "--no-charts",
                                    "--note", "bench/gpu_check.py headline subset"], left, _child_env(dry_run, False))
        res.log += "\n--- report ---\n" + rlog
        if rcode != 0 and res.status == "ok":
            res.status = "failed"
            res.summary.append("bench.report failed")
        res.summary += bench_headline(json.loads(data.read_text()))
    elif res.status == "ok":
        res.status, res.summary = "error", ["no benchmark JSON written"]
    res.seconds = time.perf_counter() - start
    return res


def bench_headline(data: dict) -> list[str]:
    """fastfer's median against each baseline's, per group, and the fraction of the measured floor."""
    groups: dict[str, dict[str, dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or "", {})[b["extra_info"].get("provider", "?")] = b
    lines = []
    for group, by in sorted(groups.items()):
        fused = [p for p in by if p.startswith("fastfer-")]
        if not fused:
            continue
        best = min(fused, key=lambda p: by[p]["stats"]["median"])
        med = by[best]["stats"]["median"]
        ratios = [f"{by[b]['stats']['median'] / med:.2f}× {b}" for b in ("eager", "sdpa", "compile") if b in by]
        info = by[best]["extra_info"]
        floor = info.get("device_floor_fraction", info.get("floor_fraction"))
        lines.append(f"{group}: {best} {med * 1e6:.0f} µs; " + ", ".join(ratios)
                     + (f"; {floor:.0%} of floor" if floor is not None else ""))
    return lines


# --- the driver ----------------------------------------------------------------------------------------------

STEPS = ("facts", "smoke", "tests", "bench", "models")
TIMEOUTS = {"facts": 20, "smoke": 110, "tests": 120, "bench": 90, "models": 130}  # GPU; sum = the 470 s budget
DRY_TIMEOUTS = {"facts": 120, "smoke": 240, "tests": 180, "bench": 240, "models": 240}
MIN_STEP = 10.0


def render_summary(results: list[StepResult], dry_run: bool, total: float) -> str:
    lines = [f"# bench/gpu_check.py {'dry run (CPU)' if dry_run else 'GPU validation'}: {total:.0f} s", "",
             "| step | status | seconds | result |", "|---|---|---|---|"]
    for r in results:
        text = "<br>".join(" ".join(s.split()).replace("|", "/")[:300] for s in r.summary) or "–"
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created; at most 8 files are written)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU: interpreter, tiny shapes")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps out of {','.join(STEPS)}")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all steps (default 470; dry run 900)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one python step in this process
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step:
        try:
            _emit(STEP_BODIES[args.step](args.out, args.dry_run))
        except Exception as exc:  # noqa: BLE001 — reported to the driver as this step's error
            import traceback

            traceback.print_exc()
            _emit(dict(ok=False, summary=[f"{type(exc).__name__}: {exc}"[:300]]))
            return 1
        return 0

    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--only: unknown steps {unknown}; expected some of {STEPS}")
    timeouts = DRY_TIMEOUTS if args.dry_run else TIMEOUTS
    budget = args.budget if args.budget is not None else (900.0 if args.dry_run else 470.0)
    start = time.perf_counter()
    results: list[StepResult] = []
    for i, name in enumerate(steps):
        left = budget - (time.perf_counter() - start) - MIN_STEP * (len(steps) - i - 1)
        timeout = min(timeouts[name], left)
        print(f"[gpu_check] {name} (timeout {timeout:.0f} s)", flush=True)
        if timeout < MIN_STEP:
            results.append(StepResult(name, "skipped", summary=["no time left in the budget"]))
            continue
        if name in STEP_BODIES:
            res = _python_step(name, args.out, args.dry_run, timeout, poison=name == "smoke")
        else:
            res = (step_tests if name == "tests" else step_bench)(args.out, args.dry_run, timeout)
        if res.status == "timeout":
            res.summary.insert(0, f"timed out after {timeout:.0f} s")
        results.append(res)
        print(f"[gpu_check] {name}: {res.status} in {res.seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    with open(args.out / "log.txt", "w") as log:
        for r in results:
            log.write(f"===== {r.name}: {r.status} ({r.seconds:.0f} s) =====\n{r.log}\n")
    summary = render_summary(results, args.dry_run, total)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
