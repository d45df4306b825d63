"""How the Triton kernels are launched: block-size configs (autotuned on GPU, fixed in the interpreter), the
device guard, the launch hook the static sm_90 gate records through, and the one intra-program barrier.

Every kernel of this backend is wrapped in a :class:`Tunable`. A launcher calls
``tunable.launch(grid, args, constexprs, family)``, where ``family`` names the candidate set (e.g.
``("half", 96)``): on a GPU the candidates of that family are autotuned by ``triton.autotune`` (keyed on the
kernel's ``key`` arguments — N, M, D, a batch·heads bucket, the dot precision — and, by triton, on the tensor
dtypes); under the interpreter, or with ``FASTFER_TRITON_AUTOTUNE=0``, the first candidate runs as is (the
interpreter would run every candidate on CPU). Grids are callables of the chosen meta
parameters and always 1-D over programs: CUDA caps grid axes 1 and 2 at 65,535 programs, axis 0 at 2³¹ − 1,
so any batch × heads launches.

``record_launches(callback)`` makes launchers hand their launch to ``callback`` instead of running it: the
static gate (``tools/static_kernel_gate.py``) runs the real launchers on meta tensors and compiles exactly
what they would launch, for every candidate. ``force_configs({name: Config})`` pins one candidate (the GPU
validation runs every candidate once that way).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import triton
import triton.language as tl

from fastfer.ops.backends.triton import interpret_mode_at_import

INTERPRETED = interpret_mode_at_import()
ENV_AUTOTUNE = "FASTFER_TRITON_AUTOTUNE"

_RECORDER: list[Optional[Callable[..., None]]] = [None]
_FORCED: dict[str, triton.Config] = {}
TUNABLES: dict[str, "Tunable"] = {}


@triton.jit
def sync_global_writes():
    """Make this program's earlier global-memory writes visible to all of its threads.

    Used where one program writes a buffer in global memory and then reads elements other threads wrote
    (scores → ranking → gather). ``bar.sync`` (``__syncthreads``) orders global as well as shared memory
    accesses among the threads of a CTA; the interpreter runs a program as one thread, so it is a no-op there.
    """
    tl.debug_barrier()


@triton.jit
def split_program_id(num_inner):
    """(outer, inner) coordinates of this program in a 1-D grid of outer × num_inner programs (inner fastest,
    so consecutive programs share the outer operand — one head's K/V — in L2)."""
    pid = tl.program_id(0)
    return pid // num_inner, pid % num_inner


def autotuning() -> bool:
    """False when ``FASTFER_TRITON_AUTOTUNE=0``: every kernel runs its first candidate (correctness test runs
    over many shapes skip compiling and timing the other candidates; bench/gpu_check.py's tests step)."""
    return os.environ.get(ENV_AUTOTUNE, "1").strip() != "0"


def device_guard(t: torch.Tensor):
    """Triton launches on the *current* CUDA device and stream: make the tensor's device current for the launch."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def dtype_family(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def fp32_dot_precision() -> str:
    """``tf32`` when PyTorch allows TF32 matmuls, else ``ieee``.

    Reads ``torch.backends.cuda.matmul.fp32_precision`` (torch ≥ 2.9; ``allow_tf32 = True`` and
    ``set_float32_matmul_precision("high")`` set it too, and reading ``allow_tf32`` raises there once the new
    API was used), else the legacy ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    setting = getattr(matmul, "fp32_precision", None)
    if setting is None:
        return "tf32" if matmul.allow_tf32 else "ieee"
    if setting == "none":  # inherits the global default
        setting = getattr(torch.backends, "fp32_precision", "none")
    return "tf32" if setting == "tf32" else "ieee"


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 matmuls inside the block through the API this torch has (tests, gate, GPU check)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        previous = matmul.allow_tf32
        matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = previous
        else:
            matmul.allow_tf32 = previous


def _quick_bench(kernel_call, quantiles):
    # Autotuning runs once per key; short budgets keep the first call of a new shape under ~0.1 s per config.
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


class Tunable:
    """One Triton kernel with its candidate configs per family.

    ``candidates(family)`` returns the ``triton.Config`` list for a family (the first one is the interpreter's
    and the fallback when autotuning is unavailable); ``key`` names the kernel arguments the autotuner keys on.
    """

    def __init__(self, name: str, kernel, candidates: Callable[[Any], Sequence[triton.Config]],
                 key: Sequence[str]) -> None:
        self.name = name
        self.kernel = kernel
        self.candidates = candidates
        self.key = list(key)
        self.tuners: dict[Any, Any] = {}  # family → triton Autotuner (its ``cache`` holds the choices per key)
        TUNABLES[name] = self

    def tuner(self, family):
        tuner = self.tuners.get(family)
        if tuner is None:
            configs = list(self.candidates(family))
            tuner = self.tuners[family] = triton.autotune(configs=configs, key=self.key,
                                                          do_bench=_quick_bench)(self.kernel)
        return tuner

    def launch(self, grid: Callable[[dict], tuple], args: Sequence[Any], constexprs: dict, family) -> None:
        recorder = _RECORDER[0]
        if recorder is not None:
            recorder(self, grid, tuple(args), dict(constexprs), family)
            return
        forced = _FORCED.get(self.name)
        if forced is None and (INTERPRETED or not autotuning()):
            forced = self.candidates(family)[0]
        if forced is not None:
            meta = {**constexprs, **forced.kwargs}
            self.kernel[grid](*args, **meta, num_warps=forced.num_warps, num_stages=forced.num_stages)
        else:
            self.tuner(family)[grid](*args, **constexprs)


@contextlib.contextmanager
def record_launches(callback: Callable[..., None]) -> Iterator[None]:
    """Inside the block, launchers call ``callback(tunable, grid, args, constexprs, family)`` instead of
    launching (the static gate compiles what they would run)."""
    previous = _RECORDER[0]
    _RECORDER[0] = callback
    try:
        yield
    finally:
        _RECORDER[0] = previous


@contextlib.contextmanager
def force_configs(configs: dict[str, triton.Config]) -> Iterator[None]:
    """Run the named kernels with the given config instead of autotuning (GPU validation of each candidate)."""
    previous = dict(_FORCED)
    _FORCED.update(configs)
    try:
        yield
    finally:
        _FORCED.clear()
        _FORCED.update(previous)


def config(num_warps: int = 4, num_stages: int = 2, **blocks: int) -> triton.Config:
    return triton.Config(dict(blocks), num_warps=num_warps, num_stages=num_stages)
