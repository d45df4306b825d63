"""Build script.

The package itself is pure Python and declared in pyproject.toml. This file exists so that the optional
C++/CUDA extension (csrc/) can be built ahead of time with
``FASTFER_BUILD_EXT=1 pip install -e . --no-build-isolation`` (torch must already be installed: build
isolation would pull a second torch). That builds ``fastfer._C_cpu`` (C++/OpenMP); with
``FASTFER_BUILD_CUDA=1`` or ``TORCH_CUDA_ARCH_LIST`` set it also builds ``fastfer._C_cuda`` with nvcc, for
``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0": A100, H100). Without FASTFER_BUILD_EXT nothing is compiled at
install time and torch is not imported; the extension is JIT-built when first asked for instead (see
fastfer/ops/backends/ext/build.py and ``fastfer build-ext``).
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _build_config():
    """fastfer/ops/backends/ext/sources.py loaded by path: the same sources and flags as the JIT build, without
    importing the fastfer package."""
    spec = importlib.util.spec_from_file_location("_fastfer_ext_sources",
                                                  ROOT / "fastfer" / "ops" / "backends" / "ext" / "sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extension_options() -> dict:
    if os.environ.get("FASTFER_BUILD_EXT", "0") != "1":
        return {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cfg = _build_config()

    def digest_flag(kind):
        return f"-DFASTFER_SOURCE_DIGEST={cfg.digest(kind, torch.__version__, torch.version.cuda)}"

    modules = [
        CppExtension(
            cfg.PREBUILT_MODULE["cpu"],
            cfg.SOURCES["cpu"],
            include_dirs=cfg.include_dirs("cpu"),
            extra_compile_args={"cxx": cfg.cxx_flags("cpu") + [digest_flag("cpu")]},
            extra_link_args=cfg.ld_flags("cpu"),
        )
    ]
    if os.environ.get("FASTFER_BUILD_CUDA", "0") == "1" or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if CUDA_HOME is None or torch.version.cuda is None:
            raise SystemExit("fastfer: building the CUDA extension needs nvcc (set CUDA_HOME) and a CUDA build of "
                             f"torch (this is torch {torch.__version__}); unset FASTFER_BUILD_CUDA to build CPU only")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg.DEFAULT_CUDA_ARCHS)
        modules.append(
            CUDAExtension(
                cfg.PREBUILT_MODULE["cuda"],
                cfg.SOURCES["cuda"],
                include_dirs=cfg.include_dirs("cuda"),
                extra_compile_args={"cxx": ["-O3", digest_flag("cuda")], "nvcc": cfg.nvcc_flags()},
            )
        )
    return {"ext_modules": modules, "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_options())
