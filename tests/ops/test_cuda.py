"""CUDA-only checks: bf16 (wrong in the Triton interpreter) and speed-sized model shapes. Skipped without a
GPU; run on a lent GPU with `PYTHONPATH=. pytest tests/ops/test_cuda.py`."""
import pytest
import torch

import fastfer
from tests.ops import test_patch_pool, test_token_pool
from tests.ops.helpers import assert_rule, eager_attend

pytestmark = pytest.mark.cuda
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("backend", test_token_pool.BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(128, 161, 8, 96, 144), (128, 145, 8, 96, 129), (128, 130, 8, 96, 116),
                                  (128, 117, 8, 96, 104), (128, 52, 4, 64, None), (128, 197, 6, 64, None),
                                  (1, 161, 8, 96, 144), (7, 197, 3, 256, 100)], ids=str)
def test_token_pool_model_shapes(backend, dtype, case):
    B, N, H, D, keep = case
    device = torch.device("cuda")
    test_token_pool._skip_unless(backend, device, dtype, D)
    torch.manual_seed(N)
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype)
    for score in ("logit_sum", "prob_mean"):
        test_token_pool.run_and_check(backend, qkv, keep, score)
    q1 = qkv.clone().requires_grad_()
    out, index, _ = fastfer.token_pool_attention(q1, keep, backend=backend)
    grad = torch.randn_like(out)
    (dq,) = torch.autograd.grad(out, q1, grad)
    q64 = qkv.double().requires_grad_()
    from fastfer.ops import reference
    (ref,) = torch.autograd.grad(reference.attend(q64, index, D**-0.5)[0], q64, grad.double())
    ql = qkv.clone().requires_grad_()
    (low,) = torch.autograd.grad(eager_attend(ql, index, D**-0.5), ql, grad)
    assert_rule(dq, ref, low, f"{backend} dqkv")


@pytest.mark.parametrize("backend", test_patch_pool.BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", [((128, 768, 14, 14), 160), ((1, 768, 14, 14), 160), ((64, 512, 28, 28), 600)],
                         ids=str)
def test_patch_pool_model_shapes(backend, dtype, shape, k):
    device = torch.device("cuda")
    test_patch_pool._skip_unless(backend, device, dtype)
    torch.manual_seed(k)
    x = torch.randn(*shape, device=device, dtype=dtype)
    pos = torch.randn(shape[2] * shape[3], shape[1], device=device, dtype=dtype)
    test_patch_pool.check_forward(backend, x, k, pos, "l1")
    test_patch_pool.check_forward(backend, x.contiguous(memory_format=torch.channels_last), k, None, "l1")


@pytest.mark.parametrize("keep", [10, None])
def test_token_pool_launches_past_65535_heads(keep):
    """B·H = 65,600 programs per query block: the 1-D grids launch (a grid axis 1 or 2 would be capped at 65,535)."""
    from fastfer.ops import reference

    torch.manual_seed(5)
    B, N, H, D = 8200, 17, 8, 16
    qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.float16, requires_grad=True)
    out, index, scores = fastfer.token_pool_attention(qkv, keep, backend="triton")
    grad = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, qkv, grad)
    some = torch.tensor([0, 4095, 4096, B - 1], device="cuda")
    q = qkv.detach()[some].float()
    ref_out, ref_index, _, ref_lse = reference.token_pool_attention(q, keep, D**-0.5, "logit_sum")
    assert torch.equal(index[some], ref_index)
    torch.testing.assert_close(out[some].float(), ref_out, atol=2e-3, rtol=2e-3)
    ref_dqkv = reference.token_pool_attention_backward(grad[some].float(), q, ref_out, ref_lse, ref_index, D**-0.5)
    torch.testing.assert_close(dqkv[some].float(), ref_dqkv, atol=5e-3, rtol=5e-3)
