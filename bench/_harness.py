"""Session settings, timing and the JSON annotations shared by bench/test_ops.py and bench/test_models.py.

Timing rules (docs/kernels.md §10): pytest-benchmark times with the host clock, so on CUDA every timed call
ends with ``torch.cuda.synchronize()`` (the time includes launch overhead — the relevant cost at these sizes);
Triton JIT, autotuning and ``torch.compile`` happen in warm-up calls outside the timed rounds.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench._roofline import Cost, HardwareFloor, roofline

REPO = Path(__file__).resolve().parent.parent
MAX_ROUNDS = 2000


@dataclass(frozen=True)
class BenchConfig:
    """What this session measures.

    size: ``smoke`` (tiny shapes, each benchmark runs once: the CI check of the harness) or ``full``.
    shape_set: ``smoke``, ``cpu`` or ``gpu`` (bench/_cases.SETS). compile_backend: what ``torch.compile`` uses
    (``inductor`` for measurements; ``aot_eager`` in smoke runs: traces the same graphs through Dynamo and
    AOTAutograd without minutes of C++ code generation on a CPU).
    """

    device: torch.device
    size: str
    disabled: bool
    compile_backend: str
    max_time: float
    min_rounds: int

    @property
    def shape_set(self) -> str:
        if self.size == "smoke":
            return "smoke"
        return "gpu" if self.device.type == "cuda" else "cpu"

    @property
    def timed(self) -> bool:
        """True when the numbers mean something (full size, benchmarking enabled)."""
        return self.size == "full" and not self.disabled

    @classmethod
    def from_pytest(cls, config) -> "BenchConfig":
        disabled = bool(config.getoption("benchmark_disable", False)) and not config.getoption("benchmark_enable", False)
        size = config.getoption("bench_size", "auto") or "auto"
        if size == "auto":
            # Real numbers only when asked for (--benchmark-only); a plain `pytest` run checks the harness.
            size = "full" if config.getoption("benchmark_only", False) and not disabled else "smoke"
        device = config.getoption("bench_device", "auto") or "auto"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        backend = config.getoption("bench_compile_backend", "auto") or "auto"
        if backend == "auto":
            backend = "inductor" if size == "full" else "aot_eager"
        return cls(
            device=torch.device(device),
            size=size,
            disabled=disabled,
            compile_backend=backend,
            max_time=float(config.getoption("benchmark_max_time", 1.0) or 1.0),
            min_rounds=int(config.getoption("benchmark_min_rounds", 5) or 5),
        )


def synchronizing(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """fn followed by a device synchronisation, so the host clock sees the whole call."""
    if device.type != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


def run_benchmark(benchmark, fn: Callable[[], object], cfg: BenchConfig, warmup: int | None = None) -> None:
    """Time ``fn`` with pytest-benchmark: warm-up outside the timed region, then enough rounds for max_time.

    Smoke size: one call (pytest-benchmark records a single round when benchmarking is enabled). Warm-up
    defaults to 3 calls on CUDA (JIT, autotune, allocator) and 1 on CPU, where calls take milliseconds.
    """
    timed = synchronizing(fn, cfg.device)
    if cfg.size == "smoke":
        benchmark.pedantic(timed, rounds=1, iterations=1)
        return
    on_cuda = cfg.device.type == "cuda"
    for _ in range(warmup if warmup is not None else (3 if on_cuda else 1)):
        timed()
    probe = []
    for _ in range(3 if on_cuda else 1):
        t0 = time.perf_counter()
        timed()
        probe.append(time.perf_counter() - t0)
    rounds = int(min(MAX_ROUNDS, max(cfg.min_rounds, cfg.max_time / max(min(probe), 1e-7))))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1 if on_cuda else 0)


def median_seconds(benchmark) -> float | None:
    """The median of the timed rounds, or None when benchmarking is disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)


def device_median_seconds(fn: Callable[[], object], device: torch.device) -> float | None:
    """CUDA-event median of fn from triton.testing.do_bench (L2 flushed between calls), None off-GPU."""
    if device.type != "cuda":
        return None
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) / 1e3


def annotate_roofline(benchmark, cost: Cost, floor: HardwareFloor, dtype: torch.dtype, device_s: float | None) -> None:
    """Add bytes, FLOPs, achieved rates and the fraction of the measured floor to ``benchmark.extra_info``."""
    info = benchmark.extra_info
    info.update(bytes=cost.bytes, flops=cost.flops, copy_gbps=floor.copy_gbps, gemm_tflops=floor.gemm_tflops(dtype))
    median = median_seconds(benchmark)
    if median is not None:
        info.update(roofline(cost, median, floor.copy_gbps, floor.gemm_tflops(dtype)))
    if device_s is not None:
        info["device_median_s"] = device_s
        info["device_floor_fraction"] = roofline(cost, device_s, floor.copy_gbps, floor.gemm_tflops(dtype))[
            "floor_fraction"
        ]


def git_commit() -> str:
    """The fastfer checkout's commit (with ``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def cpu_info() -> dict:
    """The CPU model, core count and the instruction-set flags that decide the CPU kernels' speed."""
    from fastfer.utils.precision import cpu_features

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")
    return dict(cpu_model=model, cpu_cores=os.cpu_count(), cpu_flags=[f for f in wanted if f in flags],
                cpu_native_bf16=sorted(cpu_features() & {"amx_bf16", "avx512_bf16"}))


def software_info(device: torch.device) -> dict:
    """Versions and device facts for the benchmark JSON's machine_info."""
    import fastfer

    info: dict = dict(
        bench_device=str(device),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        torch_threads=torch.get_num_threads(),
        fastfer=fastfer.__version__,
        fastfer_commit=git_commit(),
        triton_interpret=os.environ.get("TRITON_INTERPRET", "0"),
        # Other processes skew CPU timings: the 1-minute load average when the JSON was written says how much.
        load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )
    if device.type == "cpu":
        info.update(cpu_info())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_sms=props.multi_processor_count,
            nvidia_driver=nvidia_driver(),
        )
    info["fastfer_backends"] = {
        row["name"]: row["available"].get(device.type) for row in fastfer.ops.backends()
    }
    info["fastfer_extension"] = _extension_info()
    return info


def _extension_info() -> dict:
    """Which C++/CUDA extension build ran (origin and source digest), so a result names the kernels it timed."""
    try:
        from fastfer.ops.backends.ext import build as _ext
    except ImportError:
        return {}
    out = {}
    for kind in ("cpu", "cuda"):
        try:
            out[kind] = dict(origin=_ext.origin(kind), source_digest=_ext.digest(kind))
        except Exception as exc:  # an extension loader error must not lose the benchmark JSON
            out[kind] = dict(error=f"{type(exc).__name__}: {exc}")
    return out
