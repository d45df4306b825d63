"""fastfer — facial expression recognition on fused attention + token-pooling kernels.

``import fastfer`` registers the ops and the models (with timm, so ``timm.create_model("apvit")`` works) and
nothing else: no kernel compilation, no downloads, no CUDA initialisation. Kernels load the first time a
backend runs.
"""
from fastfer import ops
from fastfer.ops import backends, patch_pool, set_backend, token_pool_attention, use_backend

from fastfer import models  # noqa: E402  (registers apvit, fer_former, conv_cut with timm)
from fastfer.nn import functional  # noqa: E402
from fastfer.models import create_model  # noqa: E402
from fastfer.nn import PatchReport, patch, unpatch  # noqa: E402

__version__ = "0.1.0"

__all__ = ["PatchReport", "__version__", "backends", "create_model", "functional", "models", "ops", "patch",
           "patch_pool", "set_backend", "token_pool_attention", "unpatch", "use_backend"]
