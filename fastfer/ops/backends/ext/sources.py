"""Build configuration of the C++/CUDA extension: sources, compiler flags, and the source digest.

Standard library only, so that ``setup.py`` can load this file by path without importing fastfer or torch
(torch's version is passed in). Used by :mod:`fastfer.ops.backends.ext.build` (JIT build) and by ``setup.py`` (prebuilt
build with ``FASTFER_BUILD_EXT=1``), so both build the same thing.

Native code has one root, ``csrc/``: ``shared/`` (headers both sides use: the argument structs), ``cpu/`` (C++/
OpenMP kernels and their pybind11 bindings) and ``cuda/`` (CUDA kernels and their bindings). Two extensions,
one per backend: ``cpu`` (about a minute to build) and ``cuda`` (needs nvcc). Keeping them apart means a CPU
user never waits for nvcc, and a CUDA build problem never takes the CPU backend down with it.
"""
from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

KINDS = ("cpu", "cuda")

#: Repository root: fastfer/ops/backends/ext/sources.py → ../../../../
ROOT = Path(__file__).resolve().parents[4]

SOURCES = {
    "cpu": ["csrc/cpu/bindings.cpp", "csrc/cpu/patch_pool.cpp", "csrc/cpu/cls_select.cpp", "csrc/cpu/attention.cpp",
            "csrc/cpu/isa.cpp"],
    "cuda": ["csrc/cuda/bindings.cpp", "csrc/cuda/patch_pool.cu", "csrc/cuda/cls_select.cu", "csrc/cuda/attention.cu"],
}
#: Files whose content enters the digest (sources plus the headers they include).
DIGEST_GLOBS = {"cpu": ["csrc/shared/*.h", "csrc/cpu/*.h", "csrc/cpu/*.cpp"],
                "cuda": ["csrc/shared/*.h", "csrc/cuda/*.cuh", "csrc/cuda/*.h", "csrc/cuda/*.cu", "csrc/cuda/*.cpp"]}

#: Module names: prebuilt by setup.py inside the package, or JIT-built into the cache directory.
PREBUILT_MODULE = {"cpu": "fastfer._C_cpu", "cuda": "fastfer._C_cuda"}
JIT_MODULE = {"cpu": "fastfer_C_cpu", "cuda": "fastfer_C_cuda"}

#: GPU architectures of a prebuilt CUDA extension when TORCH_CUDA_ARCH_LIST is not set (A100, H100).
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def sources_present(kind: str) -> bool:
    return all((ROOT / s).is_file() for s in SOURCES[kind])


def source_paths(kind: str) -> list[str]:
    return [str(ROOT / s) for s in SOURCES[kind]]


def include_dirs(kind: str) -> list[str]:
    return [str(ROOT / "csrc" / "shared"), str(ROOT / "csrc" / kind)]


def openmp_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for OpenMP. GCC/Clang on Linux share torch's libgomp (same soname), so the
    kernels' threads are torch's threads. Apple's clang has no -fopenmp: the kernels then run serially."""
    if sys.platform == "darwin":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def cxx_flags(kind: str) -> list[str]:
    """Host compiler flags. No -ffast-math: the kernels must keep NaN semantics (NaN scores rank lowest)."""
    if sys.platform == "win32":
        return ["/O2"] + openmp_flags()[0]
    return ["-O3"] + openmp_flags()[0]


def ld_flags(kind: str) -> list[str]:
    return openmp_flags()[1]


def nvcc_flags() -> list[str]:
    # Full-precision expf/logf: --use_fast_math would change results against the reference.
    return ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]


def digest(kind: str, torch_version: str, torch_cuda: str | None) -> str:
    """16 hex digits over the extension's source files, the torch and Python versions and the platform: a
    built extension is reused only when all of them match (torch's C++ ABI changes between releases)."""
    h = hashlib.sha256(Path(__file__).read_bytes())  # the flags above are part of what was built
    for pattern in DIGEST_GLOBS[kind]:
        for path in sorted(ROOT.glob(pattern)):
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    for part in (kind, torch_version, str(torch_cuda), sys.implementation.cache_tag, platform.machine(), sys.platform):
        h.update(part.encode())
    return h.hexdigest()[:16]
