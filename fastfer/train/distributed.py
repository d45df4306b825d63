"""Data-parallel training under ``torchrun``: process-group setup, DDP/SyncBN wrapping, rank-0-only writes and the
collectives the engine needs.

``torchrun --nproc_per_node N -m fastfer train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
everything here is a no-op on one process. Backend: NCCL when training on CUDA, gloo on CPU. Each rank uses
``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

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


def init(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL for CUDA, gloo for CPU); returns this rank's info.
    On CUDA the current device becomes ``cuda:LOCAL_RANK``."""
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
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
