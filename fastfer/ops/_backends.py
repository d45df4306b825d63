"""Backend records and the chooser.

A backend is one implementation of the ops: ``triton`` (Triton kernels; CUDA tensors, or CPU tensors through
the Triton interpreter), ``cuda`` / ``cpu`` (the C++/CUDA extension, registered by ``_ext`` when built) and
``torch`` (the pure-PyTorch reference). Each record says what it supports and, for a given call, why it
cannot run it; the chooser takes the per-call ``backend=``, else :func:`set_backend`, else the environment
variable ``FASTFER_BACKEND``, else the first backend that supports the call in the order triton, cuda, cpu,
torch. A requested backend that cannot run raises :class:`BackendUnavailable` listing every backend's
reasons.

Nothing here imports triton or touches CUDA at import time; implementations load on first use.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

ENV_BACKEND = "FASTFER_BACKEND"
ORDER = ("triton", "cuda", "cpu", "torch")
LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailable(RuntimeError):
    """Raised when the requested backend cannot run a call; the message lists every backend's reasons."""


@dataclass(frozen=True)
class Call:
    """What the chooser needs to know about one op call."""

    op: str  # "patch_pool" | "token_pool_attention"
    device: torch.device
    dtype: torch.dtype
    head_dim: int | None = None

    def describe(self) -> str:
        extra = f", head_dim={self.head_dim}" if self.head_dim is not None else ""
        return f"{self.op}(device={self.device.type}, dtype={self.dtype}{extra})"


@dataclass
class Backend:
    """One implementation of the ops.

    ``probe(call)`` returns the reasons this backend cannot run ``call`` beyond the static limits below
    (missing package, interpreter not enabled, extension not built ...). ``load()`` returns the implementation
    namespace, which provides ``patch_pool``, ``patch_pool_backward``, ``token_pool_attention`` and
    ``token_pool_attention_backward`` with the signatures of :mod:`fastfer.ops.reference`.
    """

    name: str
    description: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    ops: tuple[str, ...]
    max_head_dim: int | None
    probe: Callable[[Call], list[str]]
    load: Callable[[], Any]
    auto: Callable[[Call], bool] = field(default=lambda call: True)

    def not_supported_reasons(self, call: Call) -> list[str]:
        reasons = []
        if call.op not in self.ops:
            reasons.append(f"does not implement {call.op}")
        if call.device.type not in self.devices:
            reasons.append(f"device {call.device.type!r} not in {self.devices}")
        if call.dtype not in self.dtypes:
            reasons.append(f"dtype {call.dtype} not in ({', '.join(str(d) for d in self.dtypes)})")
        if self.max_head_dim is not None and call.head_dim is not None and call.head_dim > self.max_head_dim:
            reasons.append(f"head_dim {call.head_dim} > {self.max_head_dim}")
        if not reasons:
            reasons.extend(self.probe(call))
        return reasons


_REGISTRY: dict[str, Backend] = {}
_default: str | None = None


def register(backend: Backend) -> None:
    """Add or replace a backend record (the extension loader registers ``cpu`` and ``cuda``)."""
    _REGISTRY[backend.name] = backend


def get(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {_known()}, got {name!r}") from None


def _known() -> tuple[str, ...]:
    return tuple(n for n in ORDER if n in _REGISTRY) + tuple(n for n in _REGISTRY if n not in ORDER)


def set_backend(name: str | None) -> None:
    """Pin the backend for every later call (None restores automatic choice)."""
    global _default
    if name is not None:
        get(name)
    _default = name


def get_backend() -> str | None:
    """The pinned backend: :func:`set_backend`'s value, else ``$FASTFER_BACKEND``, else None (automatic)."""
    if _default is not None:
        return _default
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env and env != "auto":
        get(env)
        return env
    return None


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Temporarily pin a backend: ``with use_backend("torch"): ...``."""
    global _default
    previous = _default
    set_backend(name)
    try:
        yield
    finally:
        _default = previous


def select(call: Call, requested: str | None = None) -> Backend:
    """The backend that runs ``call``: the requested (or pinned) one, else the first supported in ORDER."""
    name = requested if requested not in (None, "auto") else get_backend()
    if name is not None:
        backend = get(name)
        reasons = backend.not_supported_reasons(call)
        if reasons:
            raise BackendUnavailable(_explain(call, f"backend {name!r} was requested but cannot run it"))
        return backend
    for candidate in _known():
        backend = _REGISTRY[candidate]
        if not backend.not_supported_reasons(call) and backend.auto(call):
            return backend
    raise BackendUnavailable(_explain(call, "no backend can run it"))


def _explain(call: Call, headline: str) -> str:
    lines = [f"fastfer: {call.describe()}: {headline}. Backends:"]
    for name in _known():
        reasons = _REGISTRY[name].not_supported_reasons(call)
        lines.append(f"  {name:<7} " + ("ok" if not reasons else "; ".join(reasons)))
    return "\n".join(lines)


def backends() -> list[dict[str, Any]]:
    """Table of every backend: name, description, devices, dtypes, and why it is unavailable on each device.

    ``available[device]`` is True, or the reason string, for an fp32 call of each op on that device type.
    """
    table = []
    for name in _known():
        b = _REGISTRY[name]
        available: dict[str, Any] = {}
        for dev in ("cpu", "cuda"):
            if dev == "cuda" and not torch.cuda.is_available():
                available[dev] = "no CUDA device"
                continue
            why = b.not_supported_reasons(Call(b.ops[0], torch.device(dev), torch.float32))
            available[dev] = True if not why else "; ".join(why)
        table.append(
            dict(
                name=name,
                description=b.description,
                devices=b.devices,
                dtypes=tuple(str(d).replace("torch.", "") for d in b.dtypes),
                ops=b.ops,
                max_head_dim=b.max_head_dim,
                available=available,
            )
        )
    return table


# --- the two built-in backends -------------------------------------------------------------------------------


def _torch_probe(call: Call) -> list[str]:
    return []


register(
    Backend(
        name="torch",
        description="pure-PyTorch reference (fastfer.ops.reference); also accepts float64 for gradcheck",
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        dtypes=LOW_PRECISION + (torch.float64,),
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=None,
        probe=_torch_probe,
        load=lambda: importlib.import_module("fastfer.ops.reference"),
    )
)


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1`` before they were imported)."""
    from fastfer.ops import triton as triton_pkg

    return triton_pkg.interpreting()


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_probe(call: Call) -> list[str]:
    if not _triton_installed():
        return ["triton is not installed (pip install triton; Linux only)"]
    if call.device.type == "cpu":
        if not triton_interpreting():
            return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before fastfer's kernels load"]
        if call.dtype == torch.bfloat16:
            return ["bfloat16 is not supported by the Triton interpreter (tl.dot is wrong there); use a GPU"]
    elif call.device.type == "cuda":
        if triton_interpreting():
            return ["kernels were loaded in interpreter mode (TRITON_INTERPRET=1); CUDA tensors need a normal launch"]
    return []


register(
    Backend(
        name="triton",
        description="fused Triton kernels (CUDA; CPU only through TRITON_INTERPRET=1, for testing)",
        devices=("cuda", "cpu"),
        dtypes=LOW_PRECISION,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=256,
        probe=_triton_probe,
        load=lambda: importlib.import_module("fastfer.ops.triton.api"),
        # The interpreter is a test harness, orders of magnitude slower than the reference: only on request.
        auto=lambda call: call.device.type == "cuda",
    )
)


# --- the C++/CUDA extension backends (fastfer/ops/_ext.py) ---------------------------------------------------
# A probe reports only what stops a build (no compiler, no nvcc, an earlier failed build): it never compiles.
# Automatic choice (``auto``) takes these backends only once the extension is built — prebuilt, or cached by
# an earlier JIT build — so nobody waits a minute inside a model forward by surprise; asking for the backend
# by name (per call, set_backend, FASTFER_BACKEND) or `fastfer build-ext` builds it.


def _ext_probe(kind: str) -> Callable[[Call], list[str]]:
    def probe(call: Call) -> list[str]:
        return importlib.import_module("fastfer.ops._ext").unavailable_reasons(kind)

    return probe


def _ext_built(kind: str) -> Callable[[Call], bool]:
    return lambda call: importlib.import_module("fastfer.ops._ext").ready(kind)


def _ext_load(kind: str) -> Callable[[], Any]:
    return lambda: importlib.import_module("fastfer.ops.ext_api").namespace(kind)


register(
    Backend(
        name="cuda",
        description="C++/CUDA extension kernels (JIT-built on first explicit use, or `fastfer build-ext --cuda`)",
        devices=("cuda",),
        dtypes=LOW_PRECISION,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=256,
        probe=_ext_probe("cuda"),
        load=_ext_load("cuda"),
        auto=_ext_built("cuda"),
    )
)

register(
    Backend(
        name="cpu",
        description="C++/OpenMP extension kernels (JIT-built on first explicit use, or `fastfer build-ext`)",
        devices=("cpu",),
        dtypes=LOW_PRECISION,
        ops=("patch_pool", "token_pool_attention"),
        max_head_dim=256,
        probe=_ext_probe("cpu"),
        load=_ext_load("cpu"),
        auto=_ext_built("cpu"),
    )
)
