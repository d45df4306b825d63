"""The ``cpu`` and ``cuda`` backends: fastfer's C++/OpenMP and CUDA extension (records, build, launchers).

- :mod:`.sources` — sources, flags and the source digest (standard library only; ``setup.py`` loads it by path);
- :mod:`.build` — where a built extension comes from (prebuilt, cache, JIT build under a lock) and why not;
- :mod:`.launch` — the implementation namespaces that check layouts, allocate outputs and call the kernels.

A probe reports only what stops a build (no compiler, no nvcc, an earlier failed build): it never compiles.
Automatic choice takes these backends only once the extension is built — prebuilt, or cached by an earlier
JIT build — so nobody waits a minute inside a model forward by surprise; pinning the backend by name
(``set_backend``, ``use_backend``, ``FASTFER_BACKEND``) or ``fastfer build-ext`` builds it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from fastfer.ops.backends.registry import FLOAT_DTYPES, Backend, Call, register
from fastfer.ops.limits import MAX_HEAD_DIM


def _build():
    return importlib.import_module("fastfer.ops.backends.ext.build")


def _probe(kind: str) -> Callable[[Call], list[str]]:
    return lambda call: _build().unavailable_reasons(kind)


def _ready(kind: str) -> Callable[[Call], bool]:
    return lambda call: _build().ready(kind)


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
        description="C++/OpenMP extension kernels (built on first pinned use, or `fastfer build-ext`)",
        devices=("cpu",),
        dtypes=FLOAT_DTYPES,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=MAX_HEAD_DIM,
        probe=_probe("cpu"),
        load=_load("cpu"),
        auto=_ready("cpu"),
    )
)
