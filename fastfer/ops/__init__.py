"""fastfer's fused ops, registered with ``torch.library`` under the namespace ``fastfer``.

- :func:`patch_pool` — Attentive Patch Pooling (score positions of a CNN map, keep the top k, gather).
- :func:`token_pool_attention` — attention that also scores the CLS row, keeps the top tokens and computes
  the output for the kept queries only (Attentive Token Pooling).

This package is the only part of fastfer that knows backends exist (``triton``, ``cuda``, ``cpu``, ``torch``):
:func:`backends` lists them and why each can or cannot run here; :func:`set_backend` / :func:`use_backend`
pin one; otherwise each call takes the first that supports it; :func:`prepare` readies them for a device (on
CPU it may build the C++ kernels once, on first need). Importing this package registers the ops and
the backend records; it imports no kernels, compiles nothing and does not touch CUDA.
"""
from fastfer.ops.backends.registry import (BackendUnavailable, backends, check_backend, get_backend, prepare,
                                           set_backend, use_backend)

# Each backend module registers its own record (the registry imports none of them).
from fastfer.ops.backends import ext as _ext_backend  # noqa: E402,F401
from fastfer.ops.backends import torch as _torch_backend  # noqa: E402,F401
from fastfer.ops.backends import triton as _triton_backend  # noqa: E402,F401
from fastfer.ops.limits import MAX_HEAD_DIM  # noqa: E402
from fastfer.ops.patch_pool import PatchPoolOutput, patch_pool  # noqa: E402
from fastfer.ops.token_pool import TokenPoolOutput, token_pool_attention  # noqa: E402

__all__ = [
    "BackendUnavailable",
    "MAX_HEAD_DIM",
    "PatchPoolOutput",
    "TokenPoolOutput",
    "backends",
    "check_backend",
    "get_backend",
    "patch_pool",
    "prepare",
    "set_backend",
    "token_pool_attention",
    "use_backend",
]
