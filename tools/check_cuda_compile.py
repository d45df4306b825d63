"""Compile-check the CUDA extension without a GPU: nvcc builds every csrc/cuda/*.cu for the given GPU
architectures (with ``-Xptxas -v``: any kernel that spills registers fails the check), the host compiler
builds the CUDA bindings, and the objects must define every fastfer symbol they use (a declared but never
defined launcher fails here, not on a GPU machine at import).

    python tools/check_cuda_compile.py            # sm_90 (H100), the CI check
    python tools/check_cuda_compile.py --arch 80 --arch 90

Prints one line per file with its compile time; exits non-zero with the compiler output on the first
failure, and 0 with a note when nvcc is absent and --require-nvcc is not given.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastfer.ops.backends.ext import build as _ext, sources as cfg  # noqa: E402  (compiles nothing)


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _commands(out_dir: Path, archs: list[str], nvcc: str) -> list[tuple[str, list[str]]]:
    includes = [f"-I{d}" for d in cfg.include_dirs("cuda")]
    for path in _torch_includes():
        includes += ["-isystem", path]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    jobs = []
    for source in cfg.SOURCES["cuda"]:
        path = cfg.ROOT / source
        obj = str(out_dir / (path.stem + ".o"))
        if path.suffix == ".cu":
            cmd = [nvcc, "-std=c++17", "-Xcompiler", "-fPIC", *cfg.nvcc_flags(), "-Xptxas", "-v", *gencode, *includes,
                   "-c", str(path), "-o", obj]
        else:
            python_include = sysconfig.get_paths()["include"]
            cmd = ["c++", "-std=c++17", "-fPIC", "-O2", "-Wall", "-DTORCH_EXTENSION_NAME=fastfer_C_cuda", *includes,
                   "-isystem", python_include, "-c", str(path), "-o", obj]
        jobs.append((source, cmd))
    return jobs


def _run(job: tuple[str, list[str]]) -> tuple[str, float, subprocess.CompletedProcess]:
    name, cmd = job
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    return name, time.perf_counter() - start, result


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def _demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.SubprocessError):
        return names


def ptxas_usage(source: str, log: str) -> list[dict]:
    """One dict per kernel from nvcc's ``-Xptxas -v`` log: registers, stack, spill stores/loads, smem."""
    rows: list[dict] = []
    for line in log.splitlines():
        if (m := _ENTRY.search(line)) is not None:
            rows.append(dict(file=source, kernel=m.group(1), arch=m.group(2), regs=0, stack=0, spill_stores=0,
                             spill_loads=0, smem=0))
        elif rows and (m := _FRAME.search(line)) is not None:
            rows[-1].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif rows and (m := _USED.search(line)) is not None:
            rows[-1].update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    for row, name in zip(rows, _demangle([r["kernel"] for r in rows])):
        row["kernel"] = re.sub(r"\(.*", "", name.replace("fastfer::cuda::", "").replace("(anonymous namespace)::", ""))
    return rows


def _undefined_fastfer_symbols(objects: list[Path]) -> set[str]:
    """fastfer symbols some object uses but none defines (mangled names contain the namespace '7fastfer')."""
    defined, undefined = set(), set()
    for obj in objects:
        listing = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
        for parts in (line.split() for line in listing.splitlines()):
            if not parts or "7fastfer" not in parts[-1]:
                continue
            if len(parts) == 2 and parts[0] == "U":
                undefined.add(parts[1])
            elif len(parts) == 3 and parts[1] in "TtWw":
                defined.add(parts[2])
    return undefined - defined


def compile_all(archs: list[str], jobs: int, out_dir: Path, nvcc: str):
    """Compile every source; returns [(name, seconds, CompletedProcess)] and the kernels' ptxas usage."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(_run, _commands(out_dir, archs, nvcc)))
    usage = [row for name, _, result in results if name.endswith(".cu") for row in ptxas_usage(name, result.stderr)]
    return results, usage


def resource_rows(archs: list[str] | None = None, jobs: int = 2) -> list[dict] | None:
    """ptxas resource usage of every CUDA kernel (None without nvcc); raises when a source does not compile."""
    nvcc = _ext._nvcc()
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="fastfer-cuda-usage-") as tmp:
        results, usage = compile_all(archs or ["90"], jobs, Path(tmp), nvcc)
    for name, _, result in results:
        if result.returncode != 0:
            raise RuntimeError(f"{name} does not compile:\n{result.stderr[-3000:]}")
    return usage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="compute capability without the dot (default: 90)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--require-nvcc", action="store_true", help="fail (instead of skipping) without nvcc")
    args = parser.parse_args(argv)
    archs = args.arch or ["90"]
    nvcc = _ext._nvcc()
    if nvcc is None:
        print("nvcc not found: CUDA compile check skipped")
        return 1 if args.require_nvcc else 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastfer-cuda-check-") as tmp:
        out_dir = Path(tmp)
        results, usage = compile_all(archs, args.jobs, out_dir, nvcc)
        for name, seconds, result in results:
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"{status:6} {seconds:5.1f} s  {name} (sm_{', sm_'.join(archs)})")
            if result.returncode != 0:
                print(result.stdout + result.stderr, file=sys.stderr)
                return 1
        spilling = [r for r in usage if r["spill_stores"] or r["spill_loads"]]
        for r in usage:
            print(f"       {r['arch']:6} {r['kernel']:<60} {r['regs']:3} regs, {r['stack']} B stack, "
                  f"{r['spill_stores']}/{r['spill_loads']} B spill stores/loads, {r['smem']} B smem")
        if spilling:
            print("kernels that spill registers (must be 0):\n  " + "\n  ".join(
                f"{r['file']} {r['kernel']} ({r['arch']}): {r['spill_stores']} B stores, {r['spill_loads']} B loads"
                for r in spilling), file=sys.stderr)
            return 1
        if not usage:
            print("nvcc -Xptxas -v reported no kernels: cannot check spills", file=sys.stderr)
            return 1
        missing = _undefined_fastfer_symbols(sorted(out_dir.glob("*.o")))
        if missing:
            print("undefined fastfer symbols (declared, never defined):\n  " + "\n  ".join(sorted(missing)),
                  file=sys.stderr)
            return 1
    print(f"CUDA sources compile for sm_{', sm_'.join(archs)} with {nvcc} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
