"""fastfer's fused ops, registered with ``torch.library`` under the namespace ``fastfer``.

- :func:`patch_pool` — Attentive Patch Pooling (score positions of a CNN map, keep the top k, gather).
- :func:`token_pool_attention` — attention that also scores the CLS row, keeps the top tokens and computes
  the output for the kept queries only (Attentive Token Pooling).

Backends (``triton``, ``cuda``, ``cpu``, ``torch``) are chosen per call; see :func:`backends`.
Importing this module registers the ops; it imports no kernels, compiles nothing and does not touch CUDA.
"""
from fastfer.ops._backends import BackendUnavailable, backends, get_backend, set_backend, use_backend
from fastfer.ops.patch_pool import PatchPoolOutput, patch_pool
from fastfer.ops.token_pool import TokenPoolOutput, token_pool_attention

__all__ = [
    "BackendUnavailable",
    "PatchPoolOutput",
    "TokenPoolOutput",
    "backends",
    "get_backend",
    "patch_pool",
    "set_backend",
    "token_pool_attention",
    "use_backend",
]
