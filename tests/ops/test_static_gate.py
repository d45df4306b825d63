"""The static sm_90 gate: every Triton kernel config the launchers can run at the model shapes compiles for
Hopper without register spills and within the shared-memory limit, and the committed table
(bench/results/static-sm90.md) lists every one of them — so a kernel change that spills cannot land.

The interpreter does not enforce what the GPU compiler does (tl.dot shapes, layouts, registers), so
tools/static_gate.py compiles through triton's CUDA backend in a subprocess without TRITON_INTERPRET
(about a minute on 2 cores; triton's on-disk cache makes reruns faster). The CUDA sources get the same
spill check from tools/check_cuda_compile.py (tests/ops/test_cuda_sources_compile.py).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "bench" / "results" / "static-sm90.md"


def _nvidia_backend() -> bool:
    return importlib.util.find_spec("triton") is not None and \
        importlib.util.find_spec("triton.backends.nvidia") is not None


@pytest.mark.skipif(not _nvidia_backend(), reason="triton with its CUDA backend is not installed")
def test_every_kernel_config_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(ROOT / "tools/static_gate.py"), "--quiet", "--check-table", str(TABLE)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 problems" in proc.stdout


def test_table_helpers():
    sys.path.insert(0, str(ROOT / "tools"))
    import static_gate

    # 150 registers × 128 threads, 61 KB shared: 3 blocks by registers, 3 by shared memory → 12 of 64 warps
    assert static_gate.occupancy(150, 62464, 4) == pytest.approx(12 / 64)
    assert static_gate.occupancy(32, 0, 4) == 1.0
    row = static_gate.Row("k", "cfg", "spec", regs=255, stl=3, ldl=2, stack=16, smem=240_000, warps=4)
    problems = row.problems()
    assert any("spills" in p for p in problems) and any("shared memory" in p for p in problems)
    assert static_gate.Row("k", "cfg", "spec", regs=100, smem=1024, warps=4).problems() == []
    assert {" | ".join(["a", "b", "c"])} == static_gate.table_keys(
        "| kernel | x | y | regs | s | m | w | o | c |\n|---|---|---|---|---|---|---|---|---|\n"
        "| a | b | c | 1 | 0 | 2 | 4 | 50% | z |\n")
