"""bench/gpu_check.sh cannot rot: its dry run (every step on CPU through the Triton interpreter, tiny shapes)
runs here end to end, and the driver's timeout and budget handling is checked on its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]
FILES = {"facts.json", "smoke.json", "tests-junit.xml", "bench.json", "bench.md", "models.json", "summary.md",
         "log.txt"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    pytest.importorskip("triton", reason="the dry run's smoke step runs the Triton kernels in the interpreter")
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTFER_POISON")}
    proc = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), str(out), "--dry-run"], env={
        **env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900, cwd=ROOT)
    return proc, out


def test_dry_run_passes_every_step_and_writes_at_most_eight_files(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == FILES
    summary = proc.stdout[proc.stdout.index("# bench/gpu_check.py"):]  # the table is printed last
    for step in gpu_check.STEPS:
        assert f"| {step} | ok |" in summary, summary
    assert summary == (out / "summary.md").read_text() + "\n"


def test_dry_run_results_hold_the_checks(dry_run):
    _, out = dry_run
    facts = json.loads((out / "facts.json").read_text())
    assert facts["copy_gbps"] > 0 and facts["gemm_bf16_tflops"] > 0 and facts["torch"]
    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["ok"] and smoke["cases"], smoke["failures"]
    for case in smoke["cases"]:
        assert case["repeat_bitwise"], case["case"]
        assert case["checks"] and all(c["ok"] for c in case["checks"].values()), case
    names = {c["case"].split()[0] for c in smoke["cases"]}
    assert {"tiny_pool", "tiny_nopool", "tiny_evit", "tiny_app"} <= names
    assert "skipped" in smoke["graph"]
    suite = ET.parse(out / "tests-junit.xml").getroot()
    assert int((suite if suite.tag == "testsuite" else suite.find("testsuite")).get("tests")) > 0
    bench = json.loads((out / "bench.json").read_text())
    providers = {b["extra_info"]["provider"] for b in bench["benchmarks"]}
    assert {"eager", "sdpa", "compile", "fastfer-triton"} <= providers
    assert "Headline" in (out / "bench.md").read_text()
    models = json.loads((out / "models.json").read_text())
    assert {(m["task"], m["provider"]) for m in models} == {
        (t, p) for t in ("train", "infer") for p in gpu_check.DRY_MODEL_PROVIDERS}
    assert all(m["median_ms"] > 0 for m in models), models


def test_a_step_past_its_timeout_is_killed():
    code, _, seconds = gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, dict(os.environ))
    assert code is None and seconds < 30


def test_steps_without_time_left_are_skipped_and_reported(tmp_path, capsys):
    assert gpu_check.main([str(tmp_path), "--dry-run", "--only", "facts", "--budget", "5"]) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| facts | skipped |" in summary and "no time left" in summary
    assert capsys.readouterr().out.rstrip().endswith(summary.rstrip().splitlines()[-1])


def test_headline_ratios_from_a_benchmark_json():
    def bench(provider, median):
        return dict(group="token_pool_attention apvit_b4 B=128 bf16 fwd", stats=dict(median=median),
                    extra_info=dict(provider=provider, device_floor_fraction=0.5))

    data = dict(benchmarks=[bench("eager", 4e-4), bench("sdpa", 2e-4), bench("fastfer-triton", 1e-4)])
    (line,) = gpu_check.bench_headline(data)
    assert "fastfer-triton 100 µs" in line and "4.00× eager" in line and "2.00× sdpa" in line and "50% of floor" in line
