"""fastfer — facial expression recognition on fused attention + token-pooling kernels.

``import fastfer`` registers the ops and nothing else: no kernel compilation, no downloads, no CUDA
initialisation. Kernels load the first time a backend runs.
"""
from fastfer import ops
from fastfer.ops import backends, patch_pool, set_backend, token_pool_attention

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "ops", "patch_pool", "set_backend", "token_pool_attention"]
