"""Turn pytest-benchmark JSON files from bench/ into a markdown report and PNG charts.

    python -m bench.report bench/results/cpu-vm-2026-11-23.json [more.json ...] [-o report.md] [--charts DIR]

For each case (op, shape, batch, dtype, mode) the table lists every provider's median time, its speed-up over
each baseline measured in the same run (``× eager`` = eager median ÷ provider median, so > 1 is faster), the
achieved GB/s and TFLOP/s on the op's minimal traffic and FLOPs, and the fraction of the measured hardware
floor (see bench/_roofline.py). Model benchmarks get img/s, peak memory and speed-ups over torch-fp32,
torch-amp and torch-amp-compile. Charts (matplotlib, optional) show the speed-ups over eager.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

OP_BASELINES = ("eager", "sdpa", "compile")
MODEL_BASELINES = ("torch-fp32", "torch-amp", "torch-amp-compile")
PROVIDER_ORDER = OP_BASELINES + ("fastfer-triton", "fastfer-cuda", "fastfer-cpu", "fastfer-torch") + MODEL_BASELINES + (
    "torch-amp-graphs", "fused-amp", "fused-amp-compile", "fused-amp-graphs")


@dataclass(frozen=True)
class Row:
    """One benchmark: its case key, provider, median seconds and extra_info."""

    run: str
    op: str
    case: str
    batch: int
    dtype: str
    mode: str
    provider: str
    median: float
    info: dict

    @property
    def key(self) -> tuple:
        """The case whose providers are compared. A model's precision is part of its provider (torch-fp32 vs
        torch-amp), so model cases do not split by dtype."""
        return (self.run, self.op, self.case, self.batch, "" if self.op == "model" else self.dtype, self.mode)


def load(paths: list[Path]) -> tuple[list[Row], list[dict]]:
    """Rows of every benchmark that carries fastfer's extra_info, and one header dict per run."""
    rows, runs = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "benchmarks" not in data:
            raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
        run = Path(path).stem
        runs.append(dict(run=run, machine=data.get("machine_info", {}), floor=data.get("fastfer_floor"),
                         bench=data.get("fastfer_bench", {}), datetime=data.get("datetime", "?"),
                         commit=data.get("commit_info", {})))
        for bench in data["benchmarks"]:
            info = bench.get("extra_info") or {}
            if "op" not in info or "provider" not in info:
                continue  # not one of ours
            rows.append(Row(run, info["op"], str(info.get("case", "")), int(info.get("batch", 0)),
                            str(info.get("dtype", "")), str(info.get("mode", "")), info["provider"],
                            float(bench["stats"]["median"]), info))
    return rows, runs


def _provider_rank(name: str) -> int:
    return PROVIDER_ORDER.index(name) if name in PROVIDER_ORDER else len(PROVIDER_ORDER)


def grouped(rows: list[Row]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    for members in groups.values():
        members.sort(key=lambda r: (_provider_rank(r.provider), r.provider))
    return dict(groups)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def fmt_num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def speedups(members: list[Row], baselines: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """provider → baseline → baseline median ÷ provider median (None when the baseline did not run)."""
    base = {r.provider: r.median for r in members if r.provider in baselines}
    return {r.provider: {b: (base[b] / r.median if b in base else None) for b in baselines} for r in members}


def op_table(groups: dict[tuple, list[Row]], multi_run: bool) -> list[str]:
    head = (["run"] if multi_run else []) + ["op", "case", "B", "dtype", "mode", "provider", "median",
                                              "× eager", "× sdpa", "× compile", "GB/s", "TFLOP/s", "floor %", "bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in sorted(groups.items()):
        if key[1] == "model":
            continue
        ratios = speedups(members, OP_BASELINES)
        for r in members:
            frac = r.info.get("floor_fraction")
            cells = ([r.run] if multi_run else []) + [
                r.op, r.case, str(r.batch), r.dtype, r.mode, r.provider, fmt_time(r.median),
                *(fmt_ratio(ratios[r.provider][b]) for b in OP_BASELINES),
                fmt_num(r.info.get("gbps"), 2), fmt_num(r.info.get("tflops"), 3),
                fmt_num(None if frac is None else 100 * frac, 1), r.info.get("bound", "–"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_table(groups: dict[tuple, list[Row]], multi_run: bool) -> list[str]:
    """Per op case: the fastest fastfer provider and its speed-ups (the headline numbers)."""
    head = (["run"] if multi_run else []) + ["op", "case", "B", "dtype", "mode", "best fastfer", "median",
                                              "× eager", "× sdpa", "× compile", "floor %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in sorted(groups.items()):
        ours = [r for r in members if r.provider.startswith("fastfer-")]
        if key[1] == "model" or not ours:
            continue
        best = min(ours, key=lambda r: r.median)
        ratios = speedups(members, OP_BASELINES)[best.provider]
        frac = best.info.get("floor_fraction")
        cells = ([best.run] if multi_run else []) + [
            best.op, best.case, str(best.batch), best.dtype, best.mode, best.provider, fmt_time(best.median),
            *(fmt_ratio(ratios[b]) for b in OP_BASELINES), fmt_num(None if frac is None else 100 * frac, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_table(groups: dict[tuple, list[Row]], multi_run: bool) -> list[str]:
    head = (["run"] if multi_run else []) + ["model", "task", "B", "provider", "backend", "median", "img/s",
                                              "peak MiB", "× torch-fp32", "× torch-amp", "× torch-amp-compile"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    found = False
    for key, members in sorted(groups.items()):
        if key[1] != "model":
            continue
        found = True
        ratios = speedups(members, MODEL_BASELINES)
        for r in members:
            cells = ([r.run] if multi_run else []) + [
                r.case, r.mode, str(r.batch), r.provider, str(r.info.get("backend", "–")), fmt_time(r.median),
                fmt_num(r.info.get("img_per_s"), 1), fmt_num(r.info.get("peak_mem_mib"), 0),
                *(fmt_ratio(ratios[r.provider][b]) for b in MODEL_BASELINES),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines if found else []


def header(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        m, floor, bench = run["machine"], run["floor"] or {}, run["bench"]
        device = (m.get("gpu_name") or m.get("cpu_model") or (m.get("cpu") or {}).get("brand_raw")
                  or m.get("processor") or "?")
        threads = m.get("torch_threads")
        lines.append(f"- **{run['run']}** ({run['datetime']}): {device}"
                     + (f", driver {m['nvidia_driver']}" if m.get("nvidia_driver") else "")
                     + (f", {threads} torch threads" if threads and not m.get("gpu_name") else "")
                     + (f", load average {m['load_avg_1m']} at the end" if m.get("load_avg_1m") is not None else ""))
        lines.append(f"  torch {m.get('torch', '?')}, triton {m.get('triton', '?')}, "
                     f"fastfer {m.get('fastfer', '?')} @ {_short_commit(m.get('fastfer_commit'))}; "
                     f"size `{bench.get('size', '?')}`, shapes `{bench.get('shape_set', '?')}`, "
                     f"torch.compile backend `{bench.get('compile_backend', '?')}`")
        if m.get("cpu_flags") is not None and not m.get("gpu_name"):
            native = ", ".join(m.get("cpu_native_bf16") or []) or "none (bf16 is emulated: slower than fp32)"
            lines.append(f"  CPU: {m.get('cpu_cores', '?')} cores, flags {' '.join(m['cpu_flags'])}; native bf16: "
                         f"{native}")
        if floor:
            gemm = ", ".join(f"{d} {v:g}" for d, v in floor.get("gemm_tflops", {}).items())
            lines.append(f"  measured floor: copy {floor.get('copy_gbps', '?')} GB/s "
                         f"({floor.get('copy_buffer_mib', '?')} MiB buffers), GEMM TFLOP/s: {gemm or '–'}")
    return lines


def _short_commit(commit: str | None) -> str:
    if not commit:
        return "?"
    return commit[:12] + (" (with uncommitted changes)" if commit.endswith("-dirty") else "")


LEGEND = """\
Columns: **median** = median wall time of one call (host clock; on CUDA the call ends with a synchronize, so
launch overhead is included). **× eager / × sdpa / × compile** = that baseline's median ÷ this row's median in
the same run (> 1: faster than the baseline). **GB/s, TFLOP/s** = the op's minimal bytes and FLOPs
(bench/_roofline.py; identical for every provider) ÷ median. **floor %** = max(bytes ÷ measured copy
bandwidth, FLOPs ÷ measured GEMM rate) ÷ median; **bound** names the larger term. The copy bandwidth is
measured on buffers larger than the caches, so a working set that stays in cache can exceed 100 %. Models: **img/s** = batch ÷
median, **peak MiB** = peak allocated CUDA memory over one step (weights and optimizer state included)."""


def render(rows: list[Row], runs: list[dict], chart_paths: list[Path], md_dir: Path, notes: list[str] = ()) -> str:
    groups = grouped(rows)
    multi = len(runs) > 1
    out = ["# fastfer benchmarks", "", *header(runs), "", *(f"> {n}\n" for n in notes), LEGEND, ""]
    summary = summary_table(groups, multi)
    if len(summary) > 2:
        out += ["## Headline: fastest fastfer backend per op case", "", *summary, ""]
    ops = op_table(groups, multi)
    if len(ops) > 2:
        out += ["## Ops", "", *ops, ""]
    models = model_table(groups, multi)
    if models:
        out += ["## Models", "", *models, ""]
    if chart_paths:
        out += ["## Charts", ""]
        for path in chart_paths:
            rel = Path(os.path.relpath(path, md_dir)).as_posix()
            out += [f"![{path.stem}]({rel})", ""]
    return "\n".join(out)


def charts(rows: list[Row], out_dir: Path) -> list[Path]:
    """One PNG per (run, op, dtype, batch): speed-up over eager per case, one bar per provider, fwd and
    fwdbwd side by side (log scale); one per (run, model task) with img/s. Empty without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        print("report: matplotlib is not installed; skipping charts (pip install matplotlib)", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    by_figure: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        by_figure[(r.run, r.op, r.dtype if r.op != "model" else r.mode, r.batch)].append(r)
    for (run, op, variant, batch), members in sorted(by_figure.items()):
        groups = grouped(members)
        if op == "model":
            fig = _model_figure(plt, groups, f"{run}: models, {variant}, B={batch}")
        else:
            fig = _op_figure(plt, ticker, groups, f"{run}: {op}, {variant}, B={batch} — speed-up over eager")
        if fig is None:
            continue
        path = out_dir / f"{run}_{op}_{variant}_B{batch}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _op_figure(plt, ticker, groups, title):
    modes = sorted({key[5] for key in groups})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 3.6), squeeze=False)
    drew = False
    for ax, mode in zip(axes[0], modes, strict=True):
        cases = sorted({key[2] for key in groups if key[5] == mode})
        providers = sorted({r.provider for key, rs in groups.items() if key[5] == mode for r in rs}, key=_provider_rank)
        width = 0.8 / max(len(providers), 1)
        for i, provider in enumerate(providers):
            values = []
            for case in cases:
                members = next((rs for key, rs in groups.items() if key[2] == case and key[5] == mode), [])
                ratio = speedups(members, ("eager",)).get(provider, {}).get("eager")
                values.append(ratio if ratio else float("nan"))
            ax.bar([c + i * width for c in range(len(cases))], values, width, label=provider)
            drew = drew or any(not math.isnan(v) for v in values)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))], cases, rotation=20, fontsize=8)
        ax.set_ylabel("× eager (higher is faster)")
        ax.set_title(mode, fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    return fig if drew else (plt.close(fig) or None)


def _model_figure(plt, groups, title):
    models = sorted({key[2] for key in groups})
    providers = sorted({r.provider for rs in groups.values() for r in rs}, key=_provider_rank)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(providers), 1)
    for i, provider in enumerate(providers):
        values = []
        for model in models:
            row = next((r for key, rs in groups.items() if key[2] == model for r in rs if r.provider == provider), None)
            values.append(row.info.get("img_per_s", float("nan")) if row else float("nan"))
        ax.bar([m + i * width for m in range(len(models))], values, width, label=provider)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))], models)
    ax.set_ylabel("img/s")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", type=Path, help="markdown file (default: the first JSON with .md)")
    parser.add_argument("--charts", type=Path, help="PNG folder (default: <output stem>_charts next to it)")
    parser.add_argument("--no-charts", action="store_true", help="write the markdown only")
    parser.add_argument("--note", action="append", default=[], help="a paragraph on the run's conditions (repeatable)")
    args = parser.parse_args(argv)
    for path in args.json:
        if not path.is_file():
            parser.error(f"json: file not found: {path}")
    rows, runs = load(args.json)
    if not rows:
        parser.error(f"json: no fastfer benchmarks in {', '.join(map(str, args.json))}")
    output = args.output or args.json[0].with_suffix(".md")
    chart_dir = args.charts or output.with_name(output.stem + "_charts")
    chart_paths = [] if args.no_charts else charts(rows, chart_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(rows, runs, chart_paths, output.parent, args.note) + "\n")
    print(f"report: wrote {output}" + (f" and {len(chart_paths)} chart(s) in {chart_dir}" if chart_paths else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
