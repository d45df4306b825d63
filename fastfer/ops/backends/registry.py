"""The backend registry: records of every implementation of the ops, and the chooser.

A backend is one implementation of the ops. Each lives in its own module under this package and registers a
:class:`Backend` record when imported: :mod:`~fastfer.ops.backends.torch` (the pure-PyTorch reference),
:mod:`~fastfer.ops.backends.triton` (Triton kernels; CUDA tensors, or CPU tensors through the interpreter) and
:mod:`~fastfer.ops.backends.ext` (the C++/CUDA extension: ``cpu`` and ``cuda``). This module imports none of
them (``fastfer.ops`` does); it only keeps the records and chooses.

Choice for one call: the pinned backend (:func:`set_backend` / :func:`use_backend`, else the environment
variable ``FASTFER_BACKEND``), else the first backend in the order triton, cuda, cpu, torch whose record
supports the call and whose ``auto`` rule accepts it. A pinned backend that cannot run the call raises
:class:`BackendUnavailable` listing every backend's reasons (xformers style). Choices are memoised per
(call, pin, registry state): an op call resolves its backend with one dictionary lookup, and the backward
pass runs on the backend the forward chose (the op records its name). See docs/design.md §3.

Nothing here imports triton, compiles or touches CUDA.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

ENV_BACKEND = "FASTFER_BACKEND"
ORDER = ("triton", "cuda", "cpu", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailable(RuntimeError):
    """Raised when the requested backend cannot run a call; the message lists every backend's reasons."""


@dataclass(frozen=True)
class Call:
    """What the chooser needs to know about one op call."""

    op: str  # "patch_pool" | "token_pool_attention"
    device: torch.device
    dtype: torch.dtype
    head_dim: Optional[int] = None

    def describe(self) -> str:
        extra = f", head_dim={self.head_dim}" if self.head_dim is not None else ""
        return f"{self.op}(device={self.device.type}, dtype={self.dtype}{extra})"


@dataclass
class Backend:
    """One implementation of the ops.

    ``probe(call)`` returns the reasons this backend cannot run ``call`` beyond the static limits below
    (missing package, interpreter not enabled, no compiler ...); it never compiles. ``load()`` returns the
    implementation namespace, which provides ``patch_pool``, ``patch_pool_backward``, ``token_pool_attention``
    and ``token_pool_attention_backward`` with the signatures of :mod:`fastfer.ops.reference`. ``auto(call)``
    says whether automatic choice may take this backend for ``call`` (a test harness such as the Triton
    interpreter runs only when pinned). ``delegates`` names steps this backend hands to another backend
    (``{"token_pool_attention_backward": "triton"}``: that step needs the other backend, and raises
    :class:`BackendUnavailable` where it cannot run).
    """

    name: str
    description: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    ops: tuple[str, ...]
    max_head_dim: Optional[int]
    probe: Callable[[Call], list[str]]
    load: Callable[[], Any]
    auto: Callable[[Call], bool] = field(default=lambda call: True)
    delegates: dict[str, str] = field(default_factory=dict)

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
_pinned: Optional[str] = None
_state = [0]  # bumped whenever a record or a backend's readiness changes: invalidates memoised choices
_choices: dict[tuple, Backend] = {}
_planning = [False]  # inside planning(): auto rules answer without doing work (no build), nothing memoised


def register(backend: Backend) -> None:
    """Add or replace a backend record (each backend module registers its own on import)."""
    _REGISTRY[backend.name] = backend
    changed()


def changed() -> None:
    """Forget memoised choices: a record changed, or a backend became (un)available (e.g. a build finished)."""
    _state[0] += 1
    _choices.clear()


def get(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {known()}, got {name!r}") from None


def check_backend(name: str) -> str:
    """``name`` if it is a registered backend, else a ValueError listing the registered ones."""
    get(name)
    return name


def known() -> tuple[str, ...]:
    """Registered backend names, in the order automatic choice tries them."""
    return tuple(n for n in ORDER if n in _REGISTRY) + tuple(n for n in _REGISTRY if n not in ORDER)


def set_backend(name: Optional[str]) -> None:
    """Pin the backend for every later call (None restores automatic choice)."""
    global _pinned
    if name is not None and name != "auto":
        get(name)
    _pinned = None if name == "auto" else name


def get_backend() -> Optional[str]:
    """The pinned backend: :func:`set_backend`'s value, else ``$FASTFER_BACKEND``, else None (automatic)."""
    if _pinned is not None:
        return _pinned
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env and env != "auto":
        get(env)
        return env
    return None


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Pin a backend inside a block: ``with fastfer.ops.use_backend("torch"): model(x)``.

    Process-wide while the block runs (entry points pin once: the CLI, ``Predictor``, ``Trainer``,
    benchmarks). Under ``torch.compile`` pin around the compiled call, not inside the compiled function.
    """
    global _pinned
    previous = _pinned
    set_backend(name)
    try:
        yield
    finally:
        _pinned = previous


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """Inside this block automatic-choice rules say what they *would* do without doing it (the ``cpu`` rule
    does not build its extension) and choices are not memoised: ``fastfer info`` uses it."""
    previous = _planning[0]
    _planning[0] = True
    try:
        yield
    finally:
        _planning[0] = previous


def is_planning() -> bool:
    return _planning[0]


def select(call: Call) -> Backend:
    """The backend that runs ``call``: the pinned one (checked), else the first supported in ORDER."""
    pin = get_backend()
    if _planning[0]:
        return _choose(call, pin)
    key = (call, pin, _state[0])
    chosen = _choices.get(key)
    if chosen is None:
        chosen = _choices[key] = _choose(call, pin)
    return chosen


def _choose(call: Call, pin: Optional[str]) -> Backend:
    if pin is not None:
        backend = get(pin)
        if backend.not_supported_reasons(call):
            raise BackendUnavailable(_explain(call, f"backend {pin!r} was requested but cannot run it"))
        return backend
    for name in known():
        backend = _REGISTRY[name]
        if not backend.not_supported_reasons(call) and backend.auto(call):
            return backend
    raise BackendUnavailable(_explain(call, "no backend can run it"))


def _explain(call: Call, headline: str) -> str:
    lines = [f"fastfer: {call.describe()}: {headline}. Backends:"]
    for name in known():
        reasons = _REGISTRY[name].not_supported_reasons(call)
        lines.append(f"  {name:<7} " + ("ok" if not reasons else "; ".join(reasons)))
    return "\n".join(lines)


def backends() -> list[dict[str, Any]]:
    """Table of every backend: name, description, devices, dtypes, delegated steps, and why it is unavailable
    on each device.

    ``available[device]`` is True, or the reason string, for an fp32 call of each op on that device type;
    ``automatic[device]`` says whether automatic choice takes it there.
    """
    table = []
    with planning():
        for name in known():
            table.append(_row(name))
    return table


def _row(name: str) -> dict[str, Any]:
    """One row of :func:`backends` (called inside :func:`planning`: nothing is built)."""
    b = _REGISTRY[name]
    available: dict[str, Any] = {}
    automatic: dict[str, bool] = {}
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not torch.cuda.is_available():
            available[dev], automatic[dev] = "no CUDA device", False
            continue
        call = Call(b.ops[0], torch.device(dev), torch.float32)
        why = b.not_supported_reasons(call)
        available[dev] = True if not why else "; ".join(why)
        automatic[dev] = not why and b.auto(call)
    return dict(name=name, description=b.description, devices=b.devices,
                dtypes=tuple(str(d).replace("torch.", "") for d in b.dtypes), ops=b.ops,
                max_head_dim=b.max_head_dim, available=available, automatic=automatic,
                delegates=dict(b.delegates))


OPS = ("patch_pool", "token_pool_attention")


def _op_calls(device: str, dtype: torch.dtype) -> list[Call]:
    return [Call(op, torch.device(device), dtype, head_dim=64 if op != "patch_pool" else None) for op in OPS]


def chosen_for(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """{op: backend name or the reason none runs} for automatic choice on ``device``, without building
    anything (``fastfer info``)."""
    out = {}
    with planning():
        for call in _op_calls(device, dtype):
            try:
                out[call.op] = select(call).name
            except BackendUnavailable as exc:
                out[call.op] = str(exc).splitlines()[0]
    return out


def prepare(device: Any = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """Make the ops ready to run on ``device`` now and return {op: backend name} that will run them.

    Automatic choice may build the CPU kernels on first need (about a minute, once, with a progress line);
    entry points (training, prediction, benchmarks) call this before their own progress output starts, so the
    wait is not hidden inside the first batch. Never raises for an unavailable backend: the reason is
    returned (and automatic choice says it once).
    """
    out = {}
    for call in _op_calls(torch.device(device).type, dtype):
        try:
            backend = select(call)
            backend.load()
            out[call.op] = backend.name
        except BackendUnavailable as exc:
            out[call.op] = str(exc).splitlines()[0]
    return out
