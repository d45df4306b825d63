"""The ``cpu`` and ``cuda`` backends: fastfer's C++/OpenMP and CUDA extension (records, build, launchers).

- :mod:`.sources` — sources, flags and the source digest (standard library only; ``setup.py`` loads it by path);
- :mod:`.build` — where a built extension comes from (prebuilt, cache, JIT build under a lock) and why not;
- :mod:`.launch` — the implementation namespaces that check layouts, allocate outputs and call the kernels.

A probe reports only what stops a build (no compiler, no nvcc, an earlier failed build): it never compiles.
Automatic choice takes ``cpu`` whenever it can be had: already built, or built now on first need (once, about
a minute, under a lock; ``FASTFER_EXT_BUILD=never`` turns that off). ``cuda`` is taken automatically only
once built (Triton comes first on GPUs); pinning it by name or ``fastfer build-ext --cuda`` builds it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from fastfer.ops.backends.registry import FLOAT_DTYPES, Backend, Call, is_planning, register
from fastfer.ops.limits import MAX_HEAD_DIM


def _build():
    return importlib.import_module("fastfer.ops.backends.ext.build")


def _probe(kind: str) -> Callable[[Call], list[str]]:
    def probe(call: Call) -> list[str]:
        reasons = _build().unavailable_reasons(kind)
        if reasons and not is_planning():
            _build().say_fallback(kind, reasons)  # once per process (only for kinds built on first need)
        return reasons

    return probe


def _ready(kind: str) -> Callable[[Call], bool]:
    return lambda call: _build().ready(kind)


def _built_on_need(kind: str) -> Callable[[Call], bool]:
    """Automatic choice takes ``kind`` when it is built or can be built now (the build runs here, once)."""
    return lambda call: _build().would_run(kind) if is_planning() else _build().ensure(kind)


def _load(kind: str) -> Callable[[], Any]:
    return lambda: importlib.import_module("fastfer.ops.backends.ext.launch").namespace(kind)


register(
    Backend(
        name="cuda",
        description="C++/CUDA extension kernels (built on first pinned use, or `fastfer build-ext --cuda`); "
        "the attention backward runs the triton kernels (needs triton, else it raises)",
        devices=("cuda",),
        dtypes=FLOAT_DTYPES,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=MAX_HEAD_DIM,
        probe=_probe("cuda"),
        load=_load("cuda"),
        auto=_ready("cuda"),
        delegates={"token_pool_attention_backward": "triton"},
    )
)

register(
    Backend(
        name="cpu",
        description="C++/OpenMP extension kernels (built once on first use, or by `fastfer build-ext`)",
        devices=("cpu",),
        dtypes=FLOAT_DTYPES,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=MAX_HEAD_DIM,
        probe=_probe("cpu"),
        load=_load("cpu"),
        auto=_built_on_need("cpu"),
    )
)
