"""The ``cuda`` backend's attention backward: the extension has no kernel for it, so it runs the triton kernels
(never a silent materialising reference) or raises a clear error; its record says so. Runs on CPU: the
routing is exercised with a stand-in extension module and CPU tensors through the Triton interpreter."""
import types

import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends import registry as _backends
from fastfer.ops.backends.ext.launch import CudaOps
from fastfer.ops.backends.triton import interpreting


def test_record_says_the_backward_runs_on_triton():
    assert _backends.get("cuda").delegates == {"token_pool_attention_backward": "triton"}
    row = next(r for r in fastfer.ops.backends() if r["name"] == "cuda")
    assert row["delegates"] == {"token_pool_attention_backward": "triton"}
    assert "triton" in row["description"]


def _inputs():
    torch.manual_seed(3)
    qkv = torch.randn(2, 17, 3, 2, 16)
    out, index, _, lse = reference.token_pool_attention(qkv, 9, 0.25, "logit_sum")
    return torch.randn_like(out), qkv, out, lse, index


@pytest.mark.skipif(torch.cuda.is_available() or not interpreting(), reason="CPU session with the Triton interpreter")
def test_backward_without_a_kernel_runs_the_triton_kernels():
    ops = CudaOps("cuda", types.SimpleNamespace())  # an extension without token_pool_backward
    grad, qkv, out, lse, index = _inputs()
    dqkv = ops.token_pool_attention_backward(grad, qkv, out, lse, index, 0.25)
    expected = reference.token_pool_attention_backward(grad, qkv, out, lse, index, 0.25)
    torch.testing.assert_close(dqkv, expected, rtol=1e-5, atol=1e-6)


def test_backward_raises_when_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(_backends.get("triton"), "probe", lambda call: ["triton is not installed (test)"])
    ops = CudaOps("cuda", types.SimpleNamespace())
    with pytest.raises(_backends.BackendUnavailable) as info:
        ops.token_pool_attention_backward(*_inputs(), 0.25)
    message = str(info.value)
    assert "no attention backward kernel" in message and "triton is not installed (test)" in message
    assert "backend 'triton' or 'torch'" in message
