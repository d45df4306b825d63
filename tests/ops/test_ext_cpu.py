"""The C++/OpenMP ``cpu`` backend against the reference, beyond the generic backend matrix of
test_patch_pool.py / test_token_pool.py (which runs it too): bfloat16, APViT sizes, several key blocks,
row counts off the kernels' tiles, NaN/inf propagation, tie and NaN rules for every score kind,
determinism across thread counts, index bounds, and opcheck in bfloat16."""
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends.ext import launch as ext_api
from tests.ops.ext_helpers import check_patch_pool, check_token_pool, require_extension
from tests.ops.helpers import assert_rule, check_backward, eager_patch_pool

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def cpu_extension():
    return require_extension("cpu")


def _layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
        yield "strided", torch.cat([x, x], dim=1)[:, ::2]
        yield "unflattenable", torch.cat([x, x], dim=3)[..., ::2]  # H and W strides do not combine
    else:
        yield "strided", torch.cat([x, x], dim=2)[..., ::2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", [((2, 768, 14, 14), 160), ((3, 197, 24), 196), ((2, 96, 1, 2), 1),
                                     ((2, 33, 7, 23), 100)], ids=str)
def test_patch_pool_forward(dtype, shape, k):
    torch.manual_seed(k)
    x = torch.randn(*shape).to(dtype)
    tokens = reference.as_tokens(x)
    pos = torch.randn(tokens.shape[1], tokens.shape[2]).to(dtype)
    for name, xl in _layouts(x):
        check_patch_pool("cpu", xl, k, pos if name != "strided" else None, "l1")


@pytest.mark.parametrize("score", reference.PATCH_SCORES)
def test_patch_pool_every_score_in_bfloat16(score):
    torch.manual_seed(1)
    x = torch.randn(2, 40, 5, 7).to(torch.bfloat16)
    for _, xl in _layouts(x):
        check_patch_pool("cpu", xl, 17, None, score)


@pytest.mark.parametrize("score", reference.PATCH_SCORES)
def test_patch_pool_ties_and_nan_for_every_score(score):
    # small integers: every score is exact in fp32 whatever the summation order, so selections must match
    # the reference exactly; positions 3, 5, 11 share one score, position 7 is NaN in one channel.
    x = torch.randint(-3, 4, (2, 16, 6)).float()
    x[:, [3, 11]] = x[:, 5:6]
    x[0, 7, 2] = float("nan")
    for k in (1, 4, 9, 16):
        _, index, scores = fastfer.patch_pool(x, k, score=score, backend="cpu")
        _, ref_index, ref_scores = reference.patch_pool(x, k, None, score)
        assert torch.equal(index, ref_index), (score, k)
        assert torch.equal(scores.isnan(), ref_scores.isnan()) and scores[0, 7].isnan()
        assert torch.equal(scores.nan_to_num(), ref_scores.nan_to_num())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tokens"])
def test_patch_pool_backward(dtype, layout):
    torch.manual_seed(4)
    x = torch.randn(*((3, 40, 7, 9) if layout != "tokens" else (3, 63, 40))).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pos = torch.randn(63, 40).to(dtype)
    x1, p1 = x.clone().requires_grad_(), pos.clone().requires_grad_()
    tokens, index, _ = fastfer.patch_pool(x1, 31, pos=p1, backend="cpu")
    grad = torch.randn_like(tokens)
    gx, gpos = torch.autograd.grad(tokens, (x1, p1), grad)
    assert gx.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    x64, p64 = x.double().requires_grad_(), pos.double().requires_grad_()
    rx, rpos = torch.autograd.grad(reference.gather_tokens(reference.as_tokens(x64), index, p64), (x64, p64),
                                   grad.double())
    xl, pl = x.clone().requires_grad_(), pos.clone().requires_grad_()
    lx, lpos = torch.autograd.grad(eager_patch_pool(reference.as_tokens(xl), index, pl, "l1")[0], (xl, pl), grad)
    assert_rule(gx, rx, lx, "grad_x")
    assert_rule(gpos, rpos, lpos, "grad_pos")


# (B, N, H, D, keep): APViT's first pooling block; 300 keys = three key blocks of 128; M = 1 + keep not a
# multiple of the 8-row tiles; D below one 32-wide column tile, odd, and the 256 maximum.
TOKEN_CASES = [(2, 161, 8, 96, 144), (1, 300, 2, 64, 250), (3, 17, 3, 8, 6), (2, 33, 2, 40, None),
               (1, 20, 1, 256, 10), (2, 2, 1, 96, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TOKEN_CASES, ids=str)
def test_token_pool_forward(dtype, case):
    B, N, H, D, keep = case
    torch.manual_seed(N * D)
    qkv = torch.randn(B, N, 3, H, D).to(dtype)
    for score in reference.CLS_SCORES:
        check_token_pool("cpu", qkv, keep, score)


def test_token_pool_reads_strided_qkv_in_place():
    torch.manual_seed(5)
    packed = torch.randn(2, 29, 4, 3, 48)  # (B, N, H, 3, D): heads outside the q/k/v axis
    check_token_pool("cpu", packed.transpose(2, 3)[..., ::2], 12, "logit_sum", scale=0.3)
    check_token_pool("cpu", packed.transpose(2, 3).to(torch.bfloat16), None, "prob_mean")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(2, 161, 8, 96, 144), (1, 300, 2, 64, 250), (2, 33, 2, 40, None)], ids=str)
def test_token_pool_backward(dtype, case):
    check_backward("cpu", dtype, case, torch.device("cpu"))


def test_token_pool_nan_and_inf_propagate_like_the_reference():
    torch.manual_seed(6)
    qkv = torch.randn(2, 19, 3, 2, 16)
    qkv[0, 4, 2, 1, 5] = float("nan")  # a value of image 0, head 1: every row of that head turns NaN
    qkv[1, 7, 1, 0] = float("-inf")  # a key of image 1, head 0: logits ±inf
    for score in reference.CLS_SCORES:
        with fastfer.use_backend("cpu"):
            out, index, scores, lse = torch.ops.fastfer.token_pool_attention(qkv, 12, None, score)
        ref_out, ref_index, ref_scores, ref_lse = reference.token_pool_attention(qkv, 12, None, score)
        assert torch.equal(index, ref_index)
        for name, mine, ref in (("out", out, ref_out), ("scores", scores, ref_scores), ("lse", lse, ref_lse)):
            assert torch.equal(mine.isnan(), ref.isnan()), name
            assert torch.equal(mine.isinf(), ref.isinf()), name
            finite = ref.isfinite()
            assert torch.allclose(mine[finite], ref[finite], atol=1e-5, rtol=1e-5), name


def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(7)
    x, qkv = torch.randn(5, 48, 9, 9), torch.randn(5, 41, 3, 3, 32)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            q = qkv.clone().requires_grad_()
            out = fastfer.token_pool_attention(q, 30, backend="cpu").out
            out.backward(torch.ones_like(out))
            runs.append((fastfer.patch_pool(x, 40, backend="cpu").tokens, out.detach(), q.grad))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


def test_out_of_range_index_is_rejected_not_written():
    ops = ext_api.namespace("cpu")
    grad = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"index: entry 9 at flat position 4 is outside \[0, 9\)"):
        ops.patch_pool_backward(grad, torch.tensor([[0, 1, 2], [3, 9, 5]]), (2, 4, 3, 3), False, None)
    qkv = torch.randn(1, 5, 3, 1, 8)
    with pytest.raises(ValueError, match="outside"):
        ops.token_pool_attention_backward(torch.randn(1, 2, 8), qkv, torch.randn(1, 2, 8), torch.zeros(1, 1, 2),
                                          torch.tensor([[0, -1]]), 0.3)
    with pytest.raises(ValueError, match="expected a cpu tensor"):
        ops.patch_pool(torch.randn(1, 2, 3, device="meta"), 1, None, "l1")


def test_opcheck_in_bfloat16():
    torch.manual_seed(8)
    x = torch.randn(2, 6, 4, 5, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(20, 6, dtype=torch.bfloat16, requires_grad=True)
    qkv = torch.randn(2, 9, 3, 2, 16, dtype=torch.bfloat16, requires_grad=True)
    with fastfer.use_backend("cpu"):
        torch.library.opcheck(torch.ops.fastfer.patch_pool.default, (x, 7, pos, "max_abs"))
        torch.library.opcheck(torch.ops.fastfer.token_pool_attention.default, (qkv, 5, None, "prob_mean"))
        torch.library.opcheck(torch.ops.fastfer.token_pool_attention.default, (qkv, None, 0.5, "logit_sum"))
