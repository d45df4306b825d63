"""The ``cuda`` backend (C++/CUDA extension) against the reference on a GPU: APP and ATP forward in every
dtype and layout, backward, selection rules, opcheck. Skipped without a CUDA device; the sources are
compile-checked without one by tools/check_cuda_compile.py (CI)."""
import pytest
import torch

import fastfer
from fastfer.ops import reference
from tests.ops.ext_helpers import check_patch_pool, check_token_pool, require_extension
from tests.ops.helpers import assert_rule, eager_attend, eager_patch_pool

pytestmark = pytest.mark.cuda
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def cuda_extension():
    return require_extension("cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", [((4, 768, 14, 14), 160), ((3, 197, 24), 196), ((2, 96, 1, 2), 1),
                                     ((2, 33, 7, 23), 100), ((1, 8, 64, 70), 2000)], ids=str)
def test_patch_pool_forward(dtype, shape, k):
    torch.manual_seed(k)
    x = torch.randn(*shape, device="cuda").to(dtype)
    tokens = reference.as_tokens(x)
    pos = torch.randn(tokens.shape[1], tokens.shape[2], device="cuda").to(dtype)
    layouts = [x, torch.cat([x, x], dim=-1)[..., ::2]]
    if x.dim() == 4:
        layouts.append(x.contiguous(memory_format=torch.channels_last))
    for xl in layouts:
        for score in reference.PATCH_SCORES:
            check_patch_pool("cuda", xl, k, pos if score == "l1" else None, score)


def test_patch_pool_ties_and_nan():
    x = torch.randint(-3, 4, (2, 16, 6), device="cuda").float()
    x[:, [3, 11]] = x[:, 5:6]
    x[0, 7, 2] = float("nan")
    for score in reference.PATCH_SCORES:
        for k in (1, 4, 9, 16):
            _, index, scores = fastfer.patch_pool(x, k, score=score, backend="cuda")
            _, ref_index, ref_scores = reference.patch_pool(x, k, None, score)
            assert torch.equal(index, ref_index), (score, k)
            assert torch.equal(scores.isnan(), ref_scores.isnan())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tokens"])
def test_patch_pool_backward(dtype, layout):
    torch.manual_seed(4)
    x = torch.randn(*((3, 40, 7, 9) if layout != "tokens" else (3, 63, 40)), device="cuda").to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pos = torch.randn(63, 40, device="cuda").to(dtype)
    x1, p1 = x.clone().requires_grad_(), pos.clone().requires_grad_()
    tokens, index, _ = fastfer.patch_pool(x1, 31, pos=p1, backend="cuda")
    grad = torch.randn_like(tokens)
    gx, gpos = torch.autograd.grad(tokens, (x1, p1), grad)
    x64, p64 = x.double().requires_grad_(), pos.double().requires_grad_()
    rx, rpos = torch.autograd.grad(reference.gather_tokens(reference.as_tokens(x64), index, p64), (x64, p64),
                                   grad.double())
    xl, pl = x.clone().requires_grad_(), pos.clone().requires_grad_()
    lx, lpos = torch.autograd.grad(eager_patch_pool(reference.as_tokens(xl), index, pl, "l1")[0], (xl, pl), grad)
    assert_rule(gx, rx, lx, "grad_x")
    assert_rule(gpos, rpos, lpos, "grad_pos")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(4, 161, 8, 96, 144), (2, 197, 6, 64, None), (1, 300, 2, 64, 250),
                                  (3, 17, 3, 8, 6), (2, 33, 2, 40, 16), (1, 20, 1, 256, 10), (2, 2, 1, 96, 1)],
                         ids=str)
def test_token_pool_forward(dtype, case):
    B, N, H, D, keep = case
    torch.manual_seed(N * D)
    qkv = torch.randn(B, N, 3, H, D, device="cuda").to(dtype)
    for score in reference.CLS_SCORES:
        check_token_pool("cuda", qkv, keep, score)
    check_token_pool("cuda", torch.cat([qkv, qkv], dim=-1)[..., ::2], keep, "logit_sum", scale=0.4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_pool_backward(dtype):
    torch.manual_seed(9)
    qkv = torch.randn(2, 161, 3, 8, 96, device="cuda").to(dtype)
    q1 = qkv.clone().requires_grad_()
    out, index, _ = fastfer.token_pool_attention(q1, 144, backend="cuda")
    grad = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, q1, grad)
    q64 = qkv.double().requires_grad_()
    (ref,) = torch.autograd.grad(reference.attend(q64, index, 96**-0.5)[0], q64, grad.double())
    ql = qkv.clone().requires_grad_()
    (low,) = torch.autograd.grad(eager_attend(ql, index, 96**-0.5), ql, grad)
    for slot, name in enumerate("qkv"):
        assert_rule(dqkv[:, :, slot], ref[:, :, slot], low[:, :, slot], f"d{name}")


def test_token_pool_ties_and_nan():
    torch.manual_seed(2)
    qkv = torch.randn(2, 20, 3, 2, 8, device="cuda")
    qkv[:, [4, 9, 13, 17], 1] = qkv[:, 6:7, 1].clone()
    qkv[1, 3, 1, 0, 2] = float("nan")
    for score in reference.CLS_SCORES:
        for keep in (1, 5, 12, 19):
            _, index, scores = fastfer.token_pool_attention(qkv, keep, score=score, backend="cuda")
            _, ref_index, ref_scores, _ = reference.token_pool_attention(qkv, keep, None, score)
            assert torch.equal(index, ref_index), (score, keep)
            assert torch.equal(scores.isnan(), ref_scores.isnan())


def test_runs_on_the_current_stream_and_device():
    stream = torch.cuda.Stream()
    x = torch.randn(4, 64, 14, 14, device="cuda")
    with torch.cuda.stream(stream):
        tokens = fastfer.patch_pool(x, 100, backend="cuda").tokens
    stream.synchronize()
    assert torch.equal(tokens, fastfer.patch_pool(x, 100, backend="torch").tokens)


def test_opcheck():
    x = torch.randn(2, 6, 4, 5, device="cuda", requires_grad=True)
    pos = torch.randn(20, 6, device="cuda", requires_grad=True)
    qkv = torch.randn(2, 9, 3, 2, 16, device="cuda", requires_grad=True)
    with fastfer.use_backend("cuda"):  # the ops resolve the pinned backend (no backend argument in the schema)
        torch.library.opcheck(torch.ops.fastfer.patch_pool.default, (x, 7, pos, "l1"))
        torch.library.opcheck(torch.ops.fastfer.token_pool_attention.default, (qkv, 5, None, "prob_mean"))


def test_backward_runs_the_triton_kernels_not_the_reference(monkeypatch):
    """No attention backward kernel in the extension: the triton kernels run it (the materialising reference
    must not be called)."""
    def no_reference(*args):
        raise AssertionError("the cuda backend fell back to the materialising reference backward")

    monkeypatch.setattr(reference, "token_pool_attention_backward", no_reference)
    qkv = torch.randn(2, 33, 3, 2, 32, device="cuda", requires_grad=True)
    out, _, _ = fastfer.token_pool_attention(qkv, 20, backend="cuda")
    out.sum().backward()
    assert torch.isfinite(qkv.grad).all()
