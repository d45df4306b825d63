"""pytest-benchmark setup for fastfer's benchmarks (bench/README.md says how to run them).

- Options ``--bench-size``, ``--bench-device``, ``--bench-compile-backend`` (see ``pytest --help``).
- Device and software facts (GPU name, driver, torch, triton, fastfer commit, backend table) go into the JSON's
  ``machine_info``; the measured hardware floor (copy bandwidth, GEMM rate per dtype) goes into the JSON as
  ``fastfer_floor`` and into every op benchmark's ``extra_info``.
- Without CUDA the Triton interpreter is enabled before fastfer's kernels load (as tests/conftest.py does), so
  smoke runs exercise the Triton backend on CPU; full CPU runs never time it (it is a test harness).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench._harness import BenchConfig, software_info  # noqa: E402
from bench._roofline import HardwareFloor  # noqa: E402

_FLOOR: dict = {}  # filled by the session fixture, read by the JSON hook at the end of the session


def pytest_addoption(parser):
    group = parser.getgroup("fastfer-bench", "fastfer benchmarks")
    group.addoption(
        "--bench-size", choices=("auto", "smoke", "full"), default="auto",
        help="smoke: tiny shapes, one call each (harness check); full: model shapes, timed. "
        "auto (default): full with --benchmark-only, else smoke.",
    )
    group.addoption(
        "--bench-device", choices=("auto", "cpu", "cuda"), default="auto",
        help="device to benchmark on (default: cuda when available, else cpu)",
    )
    group.addoption(
        "--bench-compile-backend", default="auto",
        help="torch.compile backend of the compile providers (default: inductor for full, aot_eager for smoke)",
    )
    group.addoption(
        "--bench-raw-data", action="store_true",
        help="keep every round's time in the JSON (default: statistics only, so GPU result files stay small)",
    )
    group.addoption(
        "--bench-threads", type=int, default=None,
        help="CPU threads for every case (torch.set_num_threads; the C++ kernels use torch's count). Run once "
        "with 1 and once with 2 to see how a provider scales; the JSON records it",
    )
    group.addoption(
        "--bench-models", default="",
        help="comma-separated model names for bench/test_models.py (default: the family defaults for the device)",
    )


def pytest_configure(config):
    threads = config.getoption("bench_threads", None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--bench-threads: expected a positive int, got {threads}")
        import torch

        torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(software_info(BenchConfig.from_pytest(config).device))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    cfg = BenchConfig.from_pytest(config)
    output_json["fastfer_bench"] = dict(size=cfg.size, shape_set=cfg.shape_set, compile_backend=cfg.compile_backend)
    if _FLOOR:
        output_json["fastfer_floor"] = _FLOOR["floor"].as_dict()
    if not (config.getoption("bench_raw_data", False) or config.getoption("benchmark_save_data", False)):
        for bench in output_json.get("benchmarks", []):
            bench.get("stats", {}).pop("data", None)


@pytest.fixture(scope="session")
def bench_config(pytestconfig) -> BenchConfig:
    cfg = BenchConfig.from_pytest(pytestconfig)
    if cfg.device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device=cuda but no CUDA device is present")
    return cfg


@pytest.fixture(scope="session")
def hardware_floor(bench_config) -> HardwareFloor:
    """Copy bandwidth and GEMM rate of the benchmark device, measured once per session."""
    floor = HardwareFloor(bench_config.device, small=bench_config.size == "smoke")
    _FLOOR["floor"] = floor
    return floor


@pytest.fixture(autouse=True)
def _no_poison(monkeypatch):
    """tests/conftest.py sets FASTFER_POISON=1 (NaN-filled outputs) for correctness tests; timings must not
    pay for the fill, so it is off inside each benchmark (the variable is read per call)."""
    monkeypatch.setenv("FASTFER_POISON", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
