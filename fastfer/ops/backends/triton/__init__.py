"""The ``triton`` backend: its record, and the kernels in one module per family (``api`` is the namespace the
record loads; ``runtime`` holds the launch machinery: candidate configs and GPU-only autotuning, the device
guard, the launch hook of the static sm_90 gate in tools/static_gate.py, the one intra-program barrier).

Importing this package registers the record and does not import triton; each kernel module loads on its first
call. CPU tensors run
through the Triton interpreter, which must be enabled (``TRITON_INTERPRET=1``) before the kernel modules are
imported — triton decides at decoration time whether a kernel is compiled or interpreted.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

import torch

from fastfer.ops.backends.registry import FLOAT_DTYPES, Backend, Call, register
from fastfer.ops.limits import MAX_HEAD_DIM

_KERNEL_MODULES = ("patch_pool", "cls_select", "attention")


def interpreting() -> bool:
    """True when the kernels run (or, once loaded, will run) in the Triton interpreter."""
    for name in _KERNEL_MODULES:
        module = sys.modules.get(f"{__name__}.{name}")
        if module is not None:
            return module.INTERPRETED
    return _env_interpret()


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def interpret_mode_at_import() -> bool:
    """What triton itself decides for kernels decorated now (kernel modules record it at import)."""
    try:
        from triton import knobs  # triton ≥ 3.4
    except ImportError:
        return _env_interpret()
    return bool(knobs.runtime.interpret)



@functools.cache
def installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _probe(call: Call) -> list[str]:
    if not installed():
        return ["triton is not installed (pip install triton; Linux only)"]
    if call.device.type == "cpu":
        if not interpreting():
            return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before fastfer's kernels load"]
        if call.dtype == torch.bfloat16:
            return ["bfloat16 is not supported by the Triton interpreter (tl.dot is wrong there); use a GPU"]
    elif call.device.type == "cuda":
        if interpreting():
            return ["kernels were loaded in interpreter mode (TRITON_INTERPRET=1); CUDA tensors need a normal launch"]
    return []


register(
    Backend(
        name="triton",
        description="fused Triton kernels (CUDA; CPU only through TRITON_INTERPRET=1, for testing)",
        devices=("cuda", "cpu"),
        dtypes=FLOAT_DTYPES,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=MAX_HEAD_DIM,
        probe=_probe,
        load=lambda: importlib.import_module("fastfer.ops.backends.triton.api"),
        # The interpreter is a test harness, orders of magnitude slower than the reference: only on request.
        auto=lambda call: call.device.type == "cuda",
    )
)
