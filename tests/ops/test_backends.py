"""Backend records and the chooser: per-call, pinned and environment choice; errors that list why."""
import importlib.util

import pytest
import torch

import fastfer
from fastfer.ops.backends import registry as _backends


def _call(dtype=torch.float32, device="cpu"):
    return _backends.Call("token_pool_attention", torch.device(device), dtype, head_dim=16)


def test_table_lists_every_backend_with_reasons():
    table = fastfer.ops.backends()
    names = [row["name"] for row in table]
    assert names[0] == "triton" and names[-1] == "torch"
    for row in table:
        assert set(row) >= {"name", "description", "devices", "dtypes", "available"}
        for dev, ok in row["available"].items():
            assert ok is True or (isinstance(ok, str) and ok), (row["name"], dev)
    torch_row = table[-1]
    assert torch_row["available"]["cpu"] is True


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_runs_in_this_session_not_skipped(device):
    """CI must exercise the Triton kernels (on CPU through the interpreter)."""
    assert _backends.get("triton").not_supported_reasons(_call(device=device.type)) == []


def test_automatic_choice_skips_interpreter_on_cpu_and_prefers_fused_on_cuda():
    chosen = _backends.select(_call())
    assert chosen.name != "triton"  # the interpreter is a test harness: only on request
    assert _backends.select(_call(torch.float64)).name == "torch"  # only the reference runs fp64


def test_per_call_beats_pinned_beats_env(monkeypatch):
    monkeypatch.setenv("FASTFER_BACKEND", "torch")
    assert fastfer.ops.get_backend() == "torch"
    with fastfer.ops.use_backend("triton"):
        assert fastfer.ops.get_backend() == "triton"
        assert _backends.select(_call()).name == "triton"
        with fastfer.ops.use_backend("torch"):  # what a per-call backend= does inside the op function
            assert _backends.select(_call()).name == "torch"
    assert fastfer.ops.get_backend() == "torch"
    monkeypatch.setenv("FASTFER_BACKEND", "auto")
    assert fastfer.ops.get_backend() is None


def test_choice_is_memoised_and_forgotten_when_a_record_changes():
    call = _call()
    first = _backends.select(call)
    assert _backends.select(call) is first
    key = [k for k in _backends._choices if k[0] == call]
    assert key, "select() should memoise its choice"
    _backends.register(_backends.get("torch"))  # re-registering any record invalidates the memo
    assert not [k for k in _backends._choices if k[0] == call]


def test_backward_runs_on_the_backend_the_forward_chose(monkeypatch):
    """The autograd context records the forward's choice; a pin changed before backward does not move it."""
    calls = []
    torch_impl = _backends.get("torch").load()
    original = torch_impl.token_pool_attention_backward

    def spy(*args):
        calls.append("torch")
        return original(*args)

    monkeypatch.setattr(torch_impl, "token_pool_attention_backward", spy)
    qkv = torch.randn(2, 9, 3, 2, 8, requires_grad=True)
    with fastfer.ops.use_backend("torch"):
        out = fastfer.token_pool_attention(qkv, 4).out
    with fastfer.ops.use_backend("triton"):  # the interpreter would run if backward re-selected
        out.sum().backward()
    assert calls == ["torch"] and qkv.grad is not None


def test_per_call_backend_is_refused_inside_compile():
    def f(qkv):
        return fastfer.token_pool_attention(qkv, None, backend="torch").out

    with pytest.raises(Exception, match="per-call backend does not work inside torch.compile"):
        torch.compile(f, backend="eager", fullgraph=True)(torch.randn(1, 5, 3, 1, 8))


def test_set_backend_validates_names(monkeypatch):
    with pytest.raises(ValueError, match=r"backend: expected one of \(.*'torch'.*\), got 'tpu'"):
        fastfer.set_backend("tpu")
    monkeypatch.setenv("FASTFER_BACKEND", "tpu")
    with pytest.raises(ValueError, match="got 'tpu'"):
        fastfer.ops.get_backend()
    fastfer.set_backend(None)


def test_forced_backend_that_cannot_run_lists_every_backend():
    with pytest.raises(_backends.BackendUnavailable) as info, fastfer.ops.use_backend("triton"):
        _backends.select(_call(torch.float64))
    text = str(info.value)
    assert text.startswith("fastfer: token_pool_attention(device=cpu, dtype=torch.float64, head_dim=16)")
    for name in (row["name"] for row in fastfer.ops.backends()):
        assert f"\n  {name}" in text
    assert "torch   ok" in text


def test_head_dim_limit_is_a_reason():
    call = _backends.Call("token_pool_attention", torch.device("cpu"), torch.float32, head_dim=512)
    assert "head_dim 512 > 256" in _backends.get("triton").not_supported_reasons(call)
