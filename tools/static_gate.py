"""Static sm_90 gate of the Triton kernels: compile what the launchers really launch, fail on spills.

No GPU needed. The Triton launchers run on ``meta`` tensors at the model shapes (APViT blocks, APP,
FER-former, DeiT-S/EViT; B ∈ {1, 128}; bf16, fp16, fp32 with TF32 allowed and not) while
:func:`fastfer.ops.backends.triton.runtime.record_launches` captures each launch; every candidate config of
every captured launch is then compiled for sm_90a through triton's own JIT path (``kernel.warmup`` with a
stand-in driver that reports an sm_90 device), so the specialisation is the runtime's: 32-bit integer
arguments, divisibility-by-16 hints, ``stride_d == 1`` as a constant. Shapes that specialise alike share one
compile (triton's kernel cache dedupes them).

For each compiled kernel: registers, local-memory traffic (LDL/STL in the SASS, stack frame), shared memory,
warps and theoretical occupancy (CUDA occupancy rules for sm_90). Fails (exit 1) on any spill or on shared
memory above the 227 KB per-block limit.

    python tools/static_gate.py                               # check; print the table
    python tools/static_gate.py --write bench/results/static-sm90.md   # regenerate the committed table (+ nvcc)
    python tools/static_gate.py --check-table bench/results/static-sm90.md  # also: table lists every config

Run without TRITON_INTERPRET (the test suite runs it in a subprocess: tests/ops/test_static_gate.py).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SM90 = dict(regs=65536, reg_unit=256, max_warps=64, max_blocks=32, smem=233472, smem_block=232448,
            smem_reserved=1024)
BATCHES = (1, 128)


@dataclass(frozen=True)
class AttentionCase:
    name: str
    N: int
    H: int
    D: int
    keep: int | None
    score: str = "logit_sum"


@dataclass(frozen=True)
class PatchCase:
    name: str
    C: int
    side: int
    k: int
    channels_last: bool = False


def attention_cases() -> list[AttentionCase]:
    """APViT blocks (keep = int(0.9·(N−1))), FER-former (no pooling), DeiT-S (no pooling) and EViT-DeiT-S."""
    from bench import _cases

    cases = [AttentionCase(s.name, s.N, s.H, s.D, s.keep, s.score) for s in _cases.MODEL_ATTENTION]
    return cases + [AttentionCase("deits", 197, 6, 64, None)]


def patch_cases() -> list[PatchCase]:
    from bench import _cases

    return [PatchCase(s.name + layout, s.C, s.side, s.k, layout == "_cl")
            for s in _cases.MODEL_PATCH for layout in ("", "_cl")]


# --- a driver that says "sm_90" so triton's JIT compiles without a GPU ------------------------------------


class _Sm90Driver:
    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def sm90_driver():
    from triton.runtime import driver

    previous = getattr(driver, "_active", None)
    driver.set_active(_Sm90Driver())
    try:
        yield
    finally:
        driver._active = previous


# --- recording the launches of every target case -------------------------------------------------------------


@dataclass
class Launch:
    tunable: object
    grid: object
    args: tuple
    constexprs: dict
    family: object
    case: str


def record_cases() -> list[Launch]:
    import torch

    from fastfer.ops.backends.triton import api, runtime

    launches: list[Launch] = []
    label = [""]

    def recorder(tunable, grid, args, constexprs, family):
        launches.append(Launch(tunable, grid, args, constexprs, family, label[0]))

    meta = torch.device("meta")
    precisions = [(torch.bfloat16, False), (torch.float16, False), (torch.float32, False), (torch.float32, True)]
    with runtime.record_launches(recorder):
        for dtype, tf32 in precisions:
            with runtime.tf32_matmuls(tf32):
                tag = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32-tf32" if tf32 else "fp32")
                for B in BATCHES:
                    for c in attention_cases():
                        label[0] = f"{c.name} B={B} {tag}"
                        qkv = torch.empty(B, c.N, 3, c.H, c.D, dtype=dtype, device=meta)
                        scale = c.D**-0.5
                        api.token_pool_attention(qkv, c.keep, scale, c.score)
                        M = c.N if c.keep is None else c.keep + 1
                        index = torch.empty(B, M, dtype=torch.int64, device=meta)
                        out = torch.empty(B, M, c.H * c.D, dtype=dtype, device=meta)
                        lse = torch.empty(B, c.H, M, dtype=torch.float32, device=meta)
                        api.token_pool_attention_backward(out, qkv, out, lse, index, scale)
                    if tf32:
                        continue  # patch_pool has no dots: TF32 changes nothing
                    for p in patch_cases():
                        label[0] = f"{p.name} B={B} {tag}"
                        x = torch.empty(B, p.C, p.side, p.side, dtype=dtype, device=meta)
                        if p.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        pos = torch.empty(p.side * p.side, p.C, dtype=dtype, device=meta)
                        api.patch_pool(x, p.k, pos, "l1")
                        grad = torch.empty(B, p.k, p.C, dtype=dtype, device=meta)
                        index = torch.empty(B, p.k, dtype=torch.int64, device=meta)
                        api.patch_pool_backward(grad, index, tuple(x.shape), p.channels_last, dtype)
    return launches


# --- compiling and reading the cubins --------------------------------------------------------------------


@dataclass
class Row:
    kernel: str
    config: str
    spec: str
    regs: int = 0
    stack: int = 0
    ldl: int = 0
    stl: int = 0
    smem: int = 0
    warps: int = 0
    cases: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.kernel} | {self.config} | {self.spec}"

    def problems(self) -> list[str]:
        out = []
        if self.ldl or self.stl or self.stack:
            out.append(f"spills: {self.stl} STL / {self.ldl} LDL, {self.stack} B stack")
        if self.smem > SM90["smem_block"]:
            out.append(f"shared memory {self.smem} B > {SM90['smem_block']} B (sm_90 per-block limit)")
        return out


def occupancy(regs: int, smem: int, warps: int) -> float:
    """Theoretical occupancy on sm_90: resident warps ÷ 64, limited by registers, shared memory and warps."""
    per_warp = -(-max(regs, 1) * 32 // SM90["reg_unit"]) * SM90["reg_unit"]
    by_regs = (SM90["regs"] // per_warp) // warps
    by_smem = SM90["smem"] // (smem + SM90["smem_reserved"]) if smem else SM90["max_blocks"]
    blocks = min(SM90["max_blocks"], by_regs, by_smem, SM90["max_warps"] // warps)
    return blocks * warps / SM90["max_warps"]


def _tool(name: str) -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else name


def cubin_stats(cubin: bytes) -> dict:
    """REG / STACK / static SHARED from ``cuobjdump -res-usage`` and LDL/STL counts from the SASS."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if usage is None:
        raise RuntimeError("cuobjdump printed no resource usage")
    regs, stack, shared, local = map(int, usage.groups())
    return dict(regs=regs, stack=stack + local, static_smem=shared, ldl=len(re.findall(r"\bLDL(?:\.\w+)*\s", text)),
                stl=len(re.findall(r"\bSTL(?:\.\w+)*\s", text)))


def _mock(value):
    import torch
    from triton.runtime.jit import MockTensor

    if isinstance(value, torch.Tensor):
        return MockTensor(value.dtype)
    return value


def _spec(compiled) -> str:
    """The integer specialisation of a compile: which int arguments are known ≡ 0 mod 16 or constant."""
    src = compiled.src
    names = list(src.signature)
    ints = [n for n in names if src.signature[n] in ("i32", "i64")]
    div16 = {names[path[0]] for path, attrs in src.attrs.items() for a in attrs if a[0] == "tt.divisibility"}
    const = [n for n in names if src.signature[n] == "constexpr" and n[:1].islower()]
    wide = [n for n in ints if src.signature[n] == "i64"]
    plain = [n for n in ints if n in div16 and not n.startswith("stride_")]
    strides = [n.removeprefix("stride_") for n in ints if n in div16 and n.startswith("stride_")]
    if strides:
        plain.append(f"stride_{{{','.join(strides)}}}")
    parts = [f"÷16: {', '.join(plain) or '–'}"]
    if const:
        parts.append(f"=1: {', '.join(const)}")
    if wide:
        parts.append(f"i64: {','.join(wide)}")
    return "; ".join(parts)


def _config_text(constexprs: dict, cfg) -> str:
    meta = {**constexprs, **cfg.kwargs}
    blocks = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in meta.items() if k.startswith("BLOCK_"))
    flags = " ".join(f"{k}={v}" for k, v in meta.items() if not k.startswith("BLOCK_"))
    return f"{blocks} {flags} w{cfg.num_warps} s{cfg.num_stages}".replace("  ", " ").strip()


def prewarm(part: int, parts: int) -> int:
    """Compile every ``parts``-th launch (from ``part``) for the *real* GPU into triton's on-disk cache, so later
    processes load instead of compiling (bench/gpu_check.py runs several of these in parallel)."""
    count = 0
    for launch in record_cases()[part::parts]:
        args = tuple(_mock(a) for a in launch.args)
        count += len(launch.tunable.tuner(launch.family).warmup(*args, grid=launch.grid, **launch.constexprs))
    return count


def compile_launches(launches: list[Launch], log=print) -> list[Row]:
    import torch

    rows: dict[str, Row] = {}
    with sm90_driver():
        for launch in launches:
            tunable = launch.tunable
            configs = list(tunable.candidates(launch.family))
            tuner = tunable.tuner(launch.family)
            args = tuple(_mock(a) for a in launch.args)
            start = time.perf_counter()
            compiled = tuner.warmup(*args, grid=launch.grid, **launch.constexprs)
            seconds = time.perf_counter() - start
            for cfg, kernel in zip(configs, compiled):
                dtype = next(str(a.dtype).removeprefix("torch.") for a in launch.args if isinstance(a, torch.Tensor)
                             and a.dtype.is_floating_point)
                row = rows.get(kernel.hash)
                if row is None:
                    stats = cubin_stats(kernel.asm["cubin"])
                    row = rows[kernel.hash] = Row(
                        kernel=tunable.name, config=f"{dtype} " + _config_text(launch.constexprs, cfg),
                        spec=_spec(kernel), regs=stats["regs"], stack=stats["stack"], ldl=stats["ldl"],
                        stl=stats["stl"], smem=kernel.metadata.shared + stats["static_smem"],
                        warps=kernel.metadata.num_warps, seconds=seconds / max(1, len(configs)))
                    log(f"  {row.kernel:<14} {row.config:<58} regs={row.regs:<3} stl={row.stl} ldl={row.ldl} "
                        f"smem={row.smem} ({row.seconds:.1f} s)")
                if launch.case not in row.cases:
                    row.cases.append(launch.case)
    return sorted(rows.values(), key=lambda r: (r.kernel, r.config, r.spec))


# --- the table ---------------------------------------------------------------------------------------------


def _cases_text(cases: list[str]) -> str:
    """Compress 'apvit_b4 B=1 bf16', 'apvit_b4 B=128 bf16', ... into 'apvit_b4, apvit_b5 (B=1,128; bf16)'."""
    names, batches, tags = [], [], []
    for case in cases:
        name, batch, tag = case.split(" ")
        for seq, value in ((names, name), (batches, batch.removeprefix("B=")), (tags, tag)):
            if value not in seq:
                seq.append(value)
    return f"{', '.join(names)} (B={','.join(batches)}; {', '.join(tags)})"


def render(rows: list[Row], cuda_rows: list[dict] | None) -> str:
    import torch
    import triton

    lines = [
        "# Static sm_90 resource table (regenerated by `python tools/static_gate.py --write bench/results/static-sm90.md`)",
        "",
        f"Compiled without a GPU for sm_90a with triton {triton.__version__} (torch {torch.__version__}), through",
        "triton's JIT with the launchers' real arguments on meta tensors (32-bit ints, ÷16 hints, stride 1",
        "constant), at APViT b4–b7, APP (768×14×14, k=160, NCHW and channels_last), FER-former, DeiT-S and",
        "EViT-DeiT-S; B = 1 and 128; bf16, fp16, fp32 (3×TF32 and TF32). One row per distinct compile (shapes",
        "that specialise alike share it). Spills = STL/LDL instructions in the SASS and the stack frame; smem =",
        "dynamic + static shared bytes per block (limit 232,448); occupancy = resident warps ÷ 64 per SM.",
        f"{len(rows)} distinct Triton compiles. The gate (`tests/ops/test_static_gate.py`) fails on any spill or on",
        "shared memory over the limit.",
        "",
        "| kernel | dtype, config | int specialisation | regs | spills (STL/LDL, stack) | smem B | warps | occupancy | cases |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spill = f"{r.stl}/{r.ldl}, {r.stack} B" if (r.stl or r.ldl or r.stack) else "0"
        lines.append(f"| {r.kernel} | {r.config} | {r.spec} | {r.regs} | {spill} | {r.smem:,} | {r.warps} | "
                     f"{occupancy(r.regs, r.smem, r.warps):.0%} | {_cases_text(r.cases)} |")
    if cuda_rows is not None:
        lines += ["", "## csrc/cuda (nvcc -Xptxas -v, sm_90)", "",
                  "| file | kernel | regs | spill stores / loads | stack B | smem B |", "|---|---|---|---|---|---|"]
        for r in cuda_rows:
            lines.append(f"| {r['file']} | `{r['kernel']}` | {r['regs']} | {r['spill_stores']} / {r['spill_loads']} | "
                         f"{r['stack']} | {r['smem']:,} |")
    return "\n".join(lines) + "\n"


def table_keys(text: str) -> set[str]:
    keys = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("kernel", "---"):
            keys.add(" | ".join(cells[:3]))
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write the markdown table here (also runs the nvcc check)")
    parser.add_argument("--check-table", type=Path, help="fail when this committed table misses a compiled config")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--prewarm", metavar="I/N", help="on a GPU machine: fill triton's cache with part I of N")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"):
        print("unset TRITON_INTERPRET: the gate compiles for a GPU", file=sys.stderr)
        return 2
    log = (lambda *a, **k: None) if args.quiet else print
    start = time.perf_counter()
    if args.prewarm:
        part, parts = (int(v) for v in args.prewarm.split("/"))
        print(f"prewarm {part}/{parts}: {prewarm(part, parts)} kernels in {time.perf_counter() - start:.0f} s")
        return 0
    launches = record_cases()
    log(f"{len(launches)} launches recorded; compiling for sm_90a")
    rows = compile_launches(launches, log)
    seconds = time.perf_counter() - start
    failed = [(r, p) for r in rows for p in r.problems()]
    cuda_rows = None
    if args.write is not None:
        import check_cuda_compile

        cuda_rows = check_cuda_compile.resource_rows()
        failed += [(r, f"nvcc: {r['spill_stores']} B spill stores / {r['spill_loads']} B loads")
                   for r in cuda_rows or [] if r["spill_stores"] or r["spill_loads"]]
        args.write.write_text(render(rows, cuda_rows))
        log(f"wrote {args.write}")
    if args.check_table is not None:
        missing = {r.key for r in rows} - table_keys(args.check_table.read_text())
        if missing:
            print(f"{args.check_table} is stale (regenerate with --write): missing\n  " + "\n  ".join(sorted(missing)))
            return 1
    for row, problem in failed:
        name = row.key if isinstance(row, Row) else f"{row['file']} {row['kernel']}"
        print(f"FAIL {name}: {problem}")
    print(f"static gate: {len(rows)} Triton compiles for sm_90a, {len(failed)} problems, {seconds:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
