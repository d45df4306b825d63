"""bench/report.py on a small synthetic pytest-benchmark JSON: tables, ratios, charts, errors."""
import json

import pytest

from bench import report


def _bench(op, case, provider, median, mode="fwd", **info):
    extra = dict(op=op, case=case, batch=2, dtype="fp32", mode=mode, provider=provider, **info)
    return {"name": f"test[{case}-{provider}]", "group": None, "extra_info": extra,
            "stats": {"median": median, "mean": median, "min": median, "max": median, "rounds": 3}}


@pytest.fixture
def result_json(tmp_path):
    data = {
        "machine_info": {"gpu_name": "Fake GPU 80GB", "nvidia_driver": "999.1", "torch": "2.11", "triton": "3.6",
                         "fastfer": "0.1.0", "fastfer_commit": "0123456789abcdef"},
        "commit_info": {}, "datetime": "2026-11-23T12:00:00", "version": "5.2.3",
        "fastfer_bench": {"size": "full", "shape_set": "gpu", "compile_backend": "inductor"},
        "fastfer_floor": {"copy_gbps": 3000.0, "copy_buffer_mib": 256, "gemm_tflops": {"bfloat16": 700.0}},
        "benchmarks": [
            _bench("token_pool_attention", "apvit_b4", "eager", 8e-4, floor_fraction=0.05, gbps=150.0, tflops=12.0,
                   bound="memory"),
            _bench("token_pool_attention", "apvit_b4", "sdpa", 4e-4),
            _bench("token_pool_attention", "apvit_b4", "compile", 5e-4),
            _bench("token_pool_attention", "apvit_b4", "fastfer-triton", 1e-4, floor_fraction=0.4),
            _bench("token_pool_attention", "apvit_b4", "fastfer-torch", 9e-4),
            _bench("patch_pool", "apvit_app", "eager", 2e-4, mode="fwdbwd"),
            _bench("patch_pool", "apvit_app", "fastfer-triton", 5e-5, mode="fwdbwd"),
            _bench("model", "apvit", "torch-fp32", 0.4, mode="train", img_per_s=160.0, peak_mem_mib=9000.0,
                   backend="torch"),
            _bench("model", "apvit", "torch-amp-compile", 0.2, mode="train", img_per_s=320.0, backend="torch"),
            _bench("model", "apvit", "fused-amp", 0.1, mode="train", img_per_s=640.0, backend="triton"),
            {"name": "not_ours", "extra_info": {}, "stats": {"median": 1.0}},
        ],
    }
    path = tmp_path / "gpu-2026-11-23.json"
    path.write_text(json.dumps(data))
    return path


def _row(markdown: str, *cells: str) -> str:
    """The table line containing all the given cells."""
    lines = [line for line in markdown.splitlines() if all(f"| {c} |" in line for c in cells)]
    assert len(lines) == 1, f"expected one row with {cells}, got {lines}"
    return lines[0]


def test_report_tables_and_ratios(result_json, tmp_path):
    out = tmp_path / "out" / "report.md"
    assert report.main([str(result_json), "-o", str(out), "--no-charts", "--note", "GPU shared with nobody"]) == 0
    md = out.read_text()
    assert "> GPU shared with nobody" in md
    assert "Fake GPU 80GB" in md and "driver 999.1" in md and "copy 3000.0 GB/s" in md
    # × baseline = baseline median / provider median, computed within the case.
    triton = _row(md.split("## Ops")[1], "apvit_b4", "fastfer-triton")
    assert "| 100.0 µs | 8.00× | 4.00× | 5.00× |" in triton
    assert "| 40.0 |" in triton  # floor % = 100 × floor_fraction
    eager = _row(md.split("## Ops")[1], "apvit_b4", "eager")
    assert "| 1.00× | 0.50× | 0.62× | 150.00 | 12.000 | 5.0 | memory |" in eager
    # APP has no sdpa baseline: its column says so.
    app = _row(md.split("## Ops")[1], "apvit_app", "fastfer-triton")
    assert "| 4.00× | – | – |" in app
    # Headline: the fastest fastfer provider per case.
    head = _row(md.split("## Headline")[1].split("## Ops")[0], "apvit_b4")
    assert "fastfer-triton" in head and "8.00×" in head
    model = _row(md.split("## Models")[1], "apvit", "fused-amp")
    assert "| 640.0 |" in model and "| 4.00× | – | 2.00× |" in model
    assert "not_ours" not in md


def test_report_charts(result_json, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.md"
    report.main([str(result_json), "-o", str(out)])
    charts = sorted((tmp_path / "report_charts").glob("*.png"))
    names = {p.name for p in charts}
    assert "gpu-2026-11-23_token_pool_attention_fp32_B2.png" in names
    assert "gpu-2026-11-23_model_train_B2.png" in names
    assert all(p.stat().st_size > 1000 for p in charts)
    for p in charts:
        assert f"](report_charts/{p.name})" in out.read_text()


def test_report_two_runs_add_a_run_column(result_json, tmp_path):
    second = tmp_path / "other.json"
    second.write_text(result_json.read_text())
    out = tmp_path / "both.md"
    report.main([str(result_json), str(second), "-o", str(out), "--no-charts"])
    md = out.read_text()
    assert "| run | op |" in md
    assert _row(md.split("## Ops")[1], "other", "apvit_b4", "fastfer-triton")


def test_report_errors_name_the_argument(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing.json")])
    assert "json: file not found" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit):
        report.main([str(empty)])
    assert "no fastfer benchmarks" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        report.main([str(bad)])
