"""The ATen composition of fastfer::token_pool_attention (``fastfer/ops/token_pool.py``: CLS scores by one bmm,
the reference's top-k, ``scaled_dot_product_attention`` over the kept queries) that automatic choice runs for
eager CPU calls: same checks as every backend (tolerance rule against fp64, selection, gradients, ties, NaN),
plus when it runs and when it must not (a pinned backend, torch.compile, an empty batch)."""
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops import token_pool as tp
from tests.ops.helpers import check_backward
from tests.ops.test_token_pool import CASES, run_and_check

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def composed(monkeypatch):
    """Automatic choice on CPU with the composition replacing every backend; counts the composed calls."""
    monkeypatch.delenv("FASTFER_BACKEND", raising=False)
    monkeypatch.setattr(tp, "_COMPOSED_REPLACES", {None: ("torch", "cpu"), "pool": ("torch", "cpu")})
    calls = []
    original = tp._composed

    def counting(*args):
        calls.append(args[1])
        return original(*args)

    monkeypatch.setattr(tp, "_composed", counting)
    with fastfer.use_backend(None):
        yield calls


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(composed, dtype, case):
    B, N, H, D, keep = case
    torch.manual_seed(B * N + H * D)
    qkv = torch.randn(B, N, 3, H, D).to(dtype)
    for score in reference.CLS_SCORES:
        run_and_check(None, qkv, keep, score)
    assert composed == [keep, keep]


def test_strided_qkv_and_custom_scale(composed):
    torch.manual_seed(1)
    wide = torch.randn(2, 23, 3, 4, 48)
    run_and_check(None, wide[..., ::2], 9, "logit_sum", scale=0.77)  # non-contiguous head dim
    run_and_check(None, wide[:, :, :, 1:3, :24], None, "prob_mean", scale=-0.3)  # sliced heads
    assert composed == [9, None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(2, 161, 8, 96, 144), (3, 17, 4, 16, None), (1, 33, 3, 40, 1), (2, 197, 6, 64, 138)],
                         ids=str)
def test_backward_matches_reference(composed, dtype, case):
    check_backward(None, dtype, case, torch.device("cpu"))
    assert composed


def test_gradcheck_fp64(composed):
    torch.manual_seed(4)
    for keep in (None, 1, 5):
        qkv = torch.randn(2, 9, 3, 2, 8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: fastfer.token_pool_attention(t, keep, score="prob_mean").out, (qkv,))
    assert set(composed) == {None, 1, 5}


def test_ties_and_nan_follow_the_reference(composed):
    torch.manual_seed(2)
    qkv = torch.randn(2, 20, 3, 2, 8)
    qkv[:, [4, 9, 13, 17], 1] = qkv[:, 6:7, 1].clone()  # five keys with the same CLS score
    qkv[1, 11, 1, 1, 3] = float("nan")  # image 1: NaN scores (token 11's, or all of them for prob_mean)
    for score in reference.CLS_SCORES:
        scores = reference.token_pool_attention(qkv, None, None, score)[2]
        keep = int((scores[0, 1:] > scores[0, 6]).sum()) + 3  # cut inside the tied group of image 0
        _, index, _ = fastfer.token_pool_attention(qkv, keep, score=score)
        assert torch.equal(index, reference.token_pool_attention(qkv, keep, None, score)[1])
        assert set(index[0].tolist()) & {4, 6, 9, 13, 17} == {4, 6, 9}
    assert len(composed) == 2


def test_runs_only_for_unpinned_eager_cpu_calls(monkeypatch):
    monkeypatch.delenv("FASTFER_BACKEND", raising=False)
    seen = []
    original = tp._composed
    monkeypatch.setattr(tp, "_composed", lambda *args: seen.append(args[1]) or original(*args))
    qkv = torch.randn(2, 17, 3, 2, 8)
    with fastfer.use_backend(None):
        fastfer.token_pool_attention(qkv, None)  # plain attention: always the composition under automatic choice
        assert seen == [None]
        fastfer.token_pool_attention(qkv, None, backend="torch")  # a per-call backend runs itself
        fastfer.token_pool_attention(qkv[:0], None)  # empty batch: no work at all
        compiled = torch.compile(lambda t: fastfer.token_pool_attention(t, None).out, backend="aot_eager",
                                 fullgraph=True)
        torch.testing.assert_close(compiled(qkv), reference.token_pool_attention(qkv, None)[0])
        assert seen == [None]  # a compiled graph keeps the op (its backend is resolved when the graph runs)
    with fastfer.use_backend("torch"):  # a pinned backend runs itself
        fastfer.token_pool_attention(qkv, None)
    monkeypatch.setenv("FASTFER_BACKEND", "torch")
    fastfer.token_pool_attention(qkv, None)
    assert seen == [None]
