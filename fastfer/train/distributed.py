"""Data-parallel training under ``torchrun``: process-group setup, DDP/SyncBN wrapping, rank-0-only writes and the
collectives the engine needs.

``torchrun --nproc_per_node N -m fastfer train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
everything here is a no-op on one process. Backend: NCCL when training on CUDA, gloo on CPU. Each rank uses
``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables (1 process when unset)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"{name}: expected an integer (set by torchrun), got {value!r}") from None

    info = DistInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK: expected 0 ≤ RANK < WORLD_SIZE={info.world_size}, got {info.rank}")
    return info


def init(device_type: str, timeout_s: float = 300.0, stall_timeout_s: Optional[float] = 120.0) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL for CUDA, gloo for CPU); returns this rank's info.
    On CUDA the current device becomes ``cuda:LOCAL_RANK``.

    ``timeout_s``: how long a collective may wait for the other ranks (torch's default is 30 minutes).
    ``stall_timeout_s``: start the :class:`Watchdog` — every rank beats a heartbeat through the rendezvous store
    and ends the job, naming the rank, when another rank has not beaten for that long (a stopped, hung or killed
    process); None disables it."""
    info = env_info()
    if not info.enabled:
        return info
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                               f"visible: use --nproc_per_node ≤ the GPU count")
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        if stall_timeout_s:
            Watchdog.start(info, stall_timeout_s)
    return info


def shutdown() -> None:
    Watchdog.stop()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Watchdog:
    """Heartbeats between ranks through a separate client of the rendezvous store (MASTER_ADDR:MASTER_PORT).

    A thread on every rank increments its counter every ``interval_s`` and watches the others'; a counter that
    has not moved for ``stall_timeout_s`` (measured on this rank's clock, so clock skew between machines does not
    matter) means that rank stopped answering: the thread prints one line naming it and ends this process with
    status 1 (the main thread may be blocked inside a collective), and torchrun then stops the rest of the job.
    A rank that is merely busy keeps beating, since the thread runs beside the training loop.
    """

    _current: Optional["Watchdog"] = None

    def __init__(self, info: DistInfo, stall_timeout_s: float, interval_s: float):
        self.info, self.stall, self.interval = info, float(stall_timeout_s), float(interval_s)
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self.store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=60))
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run") + "." + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"fastfer/heartbeat/{run}/"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fastfer-watchdog", daemon=True)

    @classmethod
    def start(cls, info: DistInfo, stall_timeout_s: float, interval_s: Optional[float] = None) -> None:
        if cls._current is not None or not info.enabled:
            return
        try:
            dog = cls(info, stall_timeout_s, interval_s or min(5.0, stall_timeout_s / 4))
        except (KeyError, ValueError, RuntimeError) as exc:  # no env:// rendezvous to reach
            print(f"fastfer train: warning: rank {info.rank}: no heartbeat watchdog ({exc}); a stalled rank is "
                  f"noticed only after the collective timeout", file=sys.stderr, flush=True)
            return
        cls._current = dog
        dog.thread.start()

    @classmethod
    def stop(cls) -> None:
        if cls._current is not None:
            cls._current.done.set()
            cls._current = None

    def _loop(self) -> None:
        me, others = self.info.rank, [r for r in range(self.info.world_size) if r != self.info.rank]
        seen: dict[int, tuple[int, float]] = {}
        beat = 0
        while not self.done.wait(self.interval if beat else 0):
            beat += 1
            now = time.monotonic()
            try:
                self.store.set(f"{self.prefix}{me}", str(beat))
                for r in others:
                    key = f"{self.prefix}{r}"
                    if not self.store.check([key]):
                        seen.setdefault(r, (0, now))  # not started yet: the clock runs from now
                    else:
                        value = int(self.store.get(key))
                        if seen.get(r, (None,))[0] != value:
                            seen[r] = (value, now)
                    last = now - seen[r][1]
                    if last > self.stall:
                        self._end(r, last)
            except Exception as exc:  # the store went away: the job is ending anyway
                if not self.done.is_set():
                    print(f"fastfer train: rank {me}: heartbeat store unreachable ({exc}); watchdog stopped",
                          file=sys.stderr, flush=True)
                return

    def _end(self, rank: int, silent_s: float) -> None:
        print(f"fastfer train: rank {rank} has not answered for {silent_s:.0f} s (stopped, hung or killed); "
              f"rank {self.info.rank} ends the job (runtime.stall_timeout_s={self.stall:g})", file=sys.stderr,
              flush=True)
        os._exit(1)


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, sync_bn: bool = False,
         find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP-wrap ``model`` (already on ``device``) when more than one process runs; SyncBN first if asked."""
    if not info.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("sync_bn: SyncBatchNorm needs CUDA devices (NCCL); got a CPU run — leave it off")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    kwargs = dict(device_ids=[device.index], output_device=device.index) if device.type == "cuda" else {}
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters,
                                                     **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user model inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place; a no-op on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate 1-D tensors of possibly different lengths from every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
