"""Triton backend: kernels in one module per family; ``api`` is the namespace the backend record loads.

Importing this package does not import triton; each kernel module loads on its first call. CPU tensors run
through the Triton interpreter, which must be enabled (``TRITON_INTERPRET=1``) before the kernel modules are
imported — triton decides at decoration time whether a kernel is compiled or interpreted.
"""
from __future__ import annotations

import os
import sys

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

