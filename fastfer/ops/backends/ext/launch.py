"""Implementation namespaces of the ``cpu`` and ``cuda`` backends (signatures of :mod:`fastfer.ops.reference`).

The extension functions take raw pointers, sizes and element strides (so the extension needs no torch
headers and builds in seconds). This module is the only caller: it checks dtypes, devices and layouts,
brings inputs into a layout the kernels accept (strided maps and qkv are read in place; small side inputs
are made contiguous), allocates the outputs with :mod:`fastfer.ops.backends.buffers` (NaN / -1 under
``FASTFER_POISON=1``, so an element a kernel misses shows up) and passes everything by keyword.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from fastfer.ops import reference
from fastfer.ops.backends import buffers as _buffers
from fastfer.ops.backends.ext import build as _ext

PATCH_SCORE_CODES = {name: i for i, name in enumerate(reference.PATCH_SCORES)}
CLS_SCORE_CODES = {name: i for i, name in enumerate(reference.CLS_SCORES)}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def dtype_code(name: str, t: Tensor) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}") from None


def _dims(x: Tensor) -> tuple[int, int, int]:
    """(B, N, C) of a (B, C, H, W) map or (B, N, C) tokens."""
    if x.dim() == 4:
        return x.shape[0], x.shape[2] * x.shape[3], x.shape[1]
    return tuple(x.shape)


class ExtensionOps:
    """The four op entry points over one extension module (``kind`` is its device type)."""

    def __init__(self, kind: str, module: ModuleType) -> None:
        self.kind = kind
        self.module = module

    def _on_device(self, **tensors: Tensor | None) -> None:
        for name, t in tensors.items():
            if t is not None and t.device.type != self.kind:
                raise ValueError(f"{name}: expected a {self.kind} tensor for the {self.kind} backend, got {t.device}")

    def _launch(self) -> dict:
        """Extra arguments of every launch: the OpenMP thread count (torch's); CudaOps passes the stream."""
        return dict(threads=torch.get_num_threads())

    def _workspace(self, numel: int, dtype: torch.dtype, device: torch.device) -> tuple[dict, Tensor | None]:
        """Scratch the kernels need from the caller: none on CPU (threads allocate their own); CudaOps
        returns a device buffer and the tensor to keep alive during the call."""
        return {}, None

    def patch_pool(self, x: Tensor, k: int, pos: Tensor | None, score: str) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, C, H, W) any memory format or (B, N, C). Returns tokens (B, k, C), index (B, k), scores (B, N)."""
        self._on_device(x=x, pos=pos)
        strides = _buffers.token_strides(x)
        if strides is None:
            x = x.contiguous()
            strides = _buffers.token_strides(x)
        B, N, C = _dims(x)
        if pos is not None:
            pos = pos.to(torch.float32).contiguous()  # exact for every float dtype; kernels add in fp32
        tokens = _buffers.empty(B, k, C, dtype=x.dtype, device=x.device)
        index = _buffers.empty(B, k, dtype=torch.int64, device=x.device)
        scores = _buffers.empty(B, N, dtype=torch.float32, device=x.device)
        self.module.patch_pool_forward(
            x=x.data_ptr(), dtype=dtype_code("x", x), B=B, N=N, C=C,
            stride_b=strides[0], stride_n=strides[1], stride_c=strides[2],
            pos=pos.data_ptr() if pos is not None else 0, k=k, score=PATCH_SCORE_CODES[score],
            tokens=tokens.data_ptr(), index=index.data_ptr(), scores=scores.data_ptr(), **self._launch())
        return tokens, index, scores

    def patch_pool_backward(self, grad_tokens: Tensor, index: Tensor, x_shape: tuple[int, ...], channels_last: bool,
                            pos_dtype: torch.dtype | None) -> tuple[Tensor, Tensor | None]:
        """grad_tokens: (B, k, C). Returns grad_x (x_shape, channels_last when asked) and grad_pos (N, C) or None."""
        self._on_device(grad_tokens=grad_tokens, index=index)
        grad_tokens = grad_tokens.contiguous()
        index = index.to(torch.int64).contiguous()
        B, k, C = grad_tokens.shape
        N = x_shape[1] if len(x_shape) == 3 else x_shape[2] * x_shape[3]
        if tuple(index.shape) != (B, k):
            raise ValueError(f"index: expected shape ({B}, {k}) to match grad_tokens, got {tuple(index.shape)}")
        grad_x = _buffers.empty(*x_shape, dtype=grad_tokens.dtype, device=grad_tokens.device)
        if channels_last and len(x_shape) == 4:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        strides = _buffers.token_strides(grad_x)
        grad_pos = _buffers.empty(N, C, dtype=torch.float32, device=grad_tokens.device) if pos_dtype else None
        workspace, _alive = self._workspace(B * N, torch.int32, grad_tokens.device)
        self.module.patch_pool_backward(
            grad_tokens=grad_tokens.data_ptr(), index=index.data_ptr(), dtype=dtype_code("grad_tokens", grad_tokens),
            B=B, N=N, C=C, k=k, grad_x=grad_x.data_ptr(),
            stride_b=strides[0], stride_n=strides[1], stride_c=strides[2],
            grad_pos=grad_pos.data_ptr() if grad_pos is not None else 0, **workspace, **self._launch())
        return grad_x, (grad_pos.to(pos_dtype) if grad_pos is not None else None)

    def token_pool_attention(self, qkv: Tensor, keep: int | None, scale: float,
                             score: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """qkv: (B, N, 3, H, D), read in place. Returns out (B, M, H·D), index (B, M), cls_scores (B, N),
        lse (B, H, M) fp32."""
        self._on_device(qkv=qkv)
        B, N, _, H, D = qkv.shape
        M = N if keep is None else 1 + keep
        out = _buffers.empty(B, M, H * D, dtype=qkv.dtype, device=qkv.device)
        index = _buffers.empty(B, M, dtype=torch.int64, device=qkv.device)
        scores = _buffers.empty(B, N, dtype=torch.float32, device=qkv.device)
        lse = _buffers.empty(B, H, M, dtype=torch.float32, device=qkv.device)
        workspace, _alive = self._workspace(B * H * N, torch.float32, qkv.device)
        self.module.token_pool_forward(
            qkv=qkv.data_ptr(), dtype=dtype_code("qkv", qkv), B=B, N=N, H=H, D=D, qkv_strides=tuple(qkv.stride()),
            keep=-1 if keep is None else keep, scale=float(scale), score=CLS_SCORE_CODES[score],
            out=out.data_ptr(), index=index.data_ptr(), cls_scores=scores.data_ptr(), lse=lse.data_ptr(),
            **workspace, **self._launch())
        return out, index, scores, lse

    def token_pool_attention_backward(self, grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, index: Tensor,
                                      scale: float) -> Tensor:
        """grad_out, out: (B, M, H·D); lse: (B, H, M); index: (B, M) unique rows. Returns dqkv (B, N, 3, H, D)
        contiguous; rows not in index get zero dq."""
        self._on_device(grad_out=grad_out, qkv=qkv, out=out, lse=lse, index=index)
        B, N, _, H, D = qkv.shape
        M = index.shape[1]
        grad_out = grad_out.to(qkv.dtype).contiguous()
        out = out.to(qkv.dtype).contiguous()
        lse = lse.to(torch.float32).contiguous()
        index = index.to(torch.int64).contiguous()
        for name, t, shape in (("grad_out", grad_out, (B, M, H * D)), ("out", out, (B, M, H * D)),
                               ("lse", lse, (B, H, M)), ("index", index, (B, M))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        dqkv = _buffers.empty(B, N, 3, H, D, dtype=qkv.dtype, device=qkv.device)
        self.module.token_pool_backward(
            grad_out=grad_out.data_ptr(), qkv=qkv.data_ptr(), dtype=dtype_code("qkv", qkv), B=B, N=N, H=H, D=D,
            qkv_strides=tuple(qkv.stride()), out=out.data_ptr(), lse=lse.data_ptr(), index=index.data_ptr(), M=M,
            scale=float(scale), dqkv=dqkv.data_ptr(), **self._launch())
        return dqkv


class CudaOps(ExtensionOps):
    """The ``cuda`` backend: CUDA kernels on the current stream of the tensors' device.

    The extension has no attention backward kernel (``token_pool_backward``); that step runs the ``triton``
    backend's kernels (same contract: the forward's natural-log fp32 LSE and (B, M, H·D) output) and raises
    :class:`~fastfer.ops.backends.registry.BackendUnavailable` when triton cannot run it — never a silent
    N×N reference. The record says so (``delegates``).
    """

    BACKWARD_DELEGATE = "triton"

    def _launch(self) -> dict:
        return dict(stream=torch.cuda.current_stream().cuda_stream)

    def _workspace(self, numel, dtype, device):
        # Freed when the call returns: the caching allocator reuses it only for work later on this stream.
        buffer = torch.empty(numel, dtype=dtype, device=device)
        return dict(workspace=buffer.data_ptr()), buffer

    def _device_of(self, t: Tensor):
        return torch.cuda.device(t.device)

    def patch_pool(self, x, k, pos, score):
        with self._device_of(x):
            return super().patch_pool(x, k, pos, score)

    def patch_pool_backward(self, grad_tokens, index, x_shape, channels_last, pos_dtype):
        with self._device_of(grad_tokens):
            return super().patch_pool_backward(grad_tokens, index, x_shape, channels_last, pos_dtype)

    def token_pool_attention(self, qkv, keep, scale, score):
        with self._device_of(qkv):
            return super().token_pool_attention(qkv, keep, scale, score)

    def token_pool_attention_backward(self, grad_out, qkv, out, lse, index, scale):
        if hasattr(self.module, "token_pool_backward"):
            with self._device_of(qkv):
                return super().token_pool_attention_backward(grad_out, qkv, out, lse, index, scale)
        return delegated_attention_backward(self.BACKWARD_DELEGATE, grad_out, qkv, out, lse, index, scale)


def delegated_attention_backward(name: str, grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, index: Tensor,
                                 scale: float) -> Tensor:
    """d(qkv) of the ``cuda`` forward by backend ``name`` (triton), or BackendUnavailable saying why not."""
    from fastfer.ops.backends import registry

    call = registry.Call("token_pool_attention", qkv.device, qkv.dtype, head_dim=qkv.shape[-1])
    try:
        delegate = registry.get(name)
    except ValueError:
        reasons = [f"backend {name!r} is not registered"]
    else:
        reasons = delegate.not_supported_reasons(call)
    if reasons:
        raise registry.BackendUnavailable(
            f"fastfer: {call.describe()} backward on the 'cuda' backend: the CUDA extension has no attention "
            f"backward kernel and runs the {name!r} kernels instead, which cannot run here: {'; '.join(reasons)}. "
            "Train with backend 'triton' or 'torch' (fastfer.ops.use_backend), or install triton.")
    return delegate.load().token_pool_attention_backward(grad_out, qkv, out, lse, index, scale)


_NAMESPACES: dict[str, ExtensionOps] = {}


def namespace(kind: str) -> ExtensionOps:
    """The implementation namespace of backend ``kind`` ("cpu" or "cuda"); builds the extension if needed."""
    module = _ext.load(kind)
    ops = _NAMESPACES.get(kind)
    if ops is None or ops.module is not module:
        ops = _NAMESPACES[kind] = (CudaOps if kind == "cuda" else ExtensionOps)(kind, module)
    return ops
