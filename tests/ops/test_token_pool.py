"""fastfer::token_pool_attention on every available backend against the reference: scores, selection,
attention output of the kept queries, gradients, edge cases, bad input, opcheck."""
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends import registry as _backends
from tests.ops.helpers import (
    assert_rule, backends_for, check_backward, check_selection, cls_scores64, eager_attend, eager_cls_scores, rule_error,
)

BACKENDS = ["triton", "cuda", "cpu", "torch"]
DTYPES = [torch.float32, torch.float16]

# (B, N, H, D, keep): N ∈ {2, 17, 161, 197}, D ∈ {16, 64, 96} (+ odd 40 and the 256 maximum), H ∈ {1, 4, 8},
# keep edge cases 1 and N-1, B ∈ {1, 3}; APViT's pooling blocks (161 → 145, 145 → 130).
CASES = [
    (1, 2, 1, 16, 1),
    (3, 17, 4, 16, None),
    (3, 17, 4, 64, 1),
    (1, 161, 8, 96, 144),
    (1, 145, 8, 96, 129),
    (3, 197, 4, 64, 196),
    (1, 197, 1, 96, None),
    (2, 33, 3, 40, 16),
    (1, 17, 2, 256, 8),
]


def _skip_unless(backend, device, dtype, head_dim):
    if backend not in backends_for("token_pool_attention", device, dtype, head_dim):
        known = {b["name"] for b in _backends.backends()}
        call = _backends.Call("token_pool_attention", device, dtype, head_dim)
        why = _backends.get(backend).not_supported_reasons(call) if backend in known else ["not registered"]
        pytest.skip(f"{backend}: {'; '.join(why)}")


def run_and_check(backend, qkv, keep, score="logit_sum", scale=None):
    """Forward on ``backend``; checks scores, selection and output by the tolerance rule."""
    B, N, _, H, D = qkv.shape
    scale = D**-0.5 if scale is None else scale
    out, index, scores = fastfer.token_pool_attention(qkv, keep, scale=scale, score=score, backend=backend)
    M = N if keep is None else keep + 1
    assert out.shape == (B, M, H * D) and out.dtype == qkv.dtype
    assert index.shape == (B, M) and scores.shape == (B, N) and scores.dtype == torch.float32

    s64 = cls_scores64(qkv, scale, score)
    assert_rule(scores, s64, eager_cls_scores(qkv, scale, score), f"{backend} cls_scores")
    if keep is None:
        assert torch.equal(index.cpu(), torch.arange(N).expand(B, N))
    else:
        assert (index[:, 0] == 0).all(), "CLS must be kept first"
        _, ref_index, _, _ = reference.token_pool_attention(qkv, keep, scale, score)
        err, _ = rule_error(scores, s64, eager_cls_scores(qkv, scale, score))
        check_selection(s64[:, 1:], index[:, 1:] - 1, ref_index[:, 1:] - 1, err + 1e-6, f"{backend} index")

    ref64, _ = reference.attend(qkv.double(), index, scale)
    assert_rule(out, ref64, eager_attend(qkv, index, scale), f"{backend} out")
    return out, index


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(backend, dtype, case, device):
    B, N, H, D, keep = case
    _skip_unless(backend, device, dtype, D)
    torch.manual_seed(B * N + H * D)
    qkv = torch.randn(B, N, 3, H, D, device=device).to(dtype)
    for score in reference.CLS_SCORES:
        run_and_check(backend, qkv, keep, score)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_qkv_and_custom_scale(backend, device):
    _skip_unless(backend, device, torch.float32, 24)
    torch.manual_seed(1)
    wide = torch.randn(2, 23, 3, 4, 48, device=device)
    run_and_check(backend, wide[..., ::2], 9, "logit_sum", scale=0.77)  # non-contiguous head dim
    run_and_check(backend, wide[:, :, :, 1:3, :24], None, "prob_mean", scale=-0.3)  # sliced heads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(2, 161, 8, 96, 144), (3, 17, 4, 16, None), (1, 33, 3, 40, 1)], ids=str)
def test_backward_matches_reference(backend, dtype, case, device):
    _skip_unless(backend, device, dtype, case[3])
    check_backward(backend, dtype, case, device)



@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lower_index(backend, device):
    _skip_unless(backend, device, torch.float32, 8)
    torch.manual_seed(2)
    qkv = torch.randn(2, 20, 3, 2, 8, device=device)
    qkv[:, [4, 9, 13, 17], 1] = qkv[:, 6:7, 1].clone()  # five keys with the same CLS score
    for score in reference.CLS_SCORES:
        scores = reference.token_pool_attention(qkv, None, None, score)[2]
        keep = int((scores[0, 1:] > scores[0, 6]).sum()) + 3  # cut inside the tied group of image 0
        _, index, _ = fastfer.token_pool_attention(qkv, keep, score=score, backend=backend)
        _, ref_index, _, _ = reference.token_pool_attention(qkv, keep, None, score)
        assert torch.equal(index.cpu(), ref_index.cpu())
        assert set(index[0].tolist()) & {4, 6, 9, 13, 17} == {4, 6, 9}


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_scores_rank_lowest(backend, device):
    _skip_unless(backend, device, torch.float32, 8)
    torch.manual_seed(3)
    qkv = torch.randn(2, 12, 3, 2, 8, device=device)
    qkv[0, 5, 1, 1, 3] = float("nan")  # key of token 5 in image 0 → its CLS logit_sum score is NaN
    _, index, scores = fastfer.token_pool_attention(qkv, 10, backend=backend)
    assert scores[0, 5].isnan() and not scores[1].isnan().any()
    assert 5 not in index[0].tolist()
    assert index[1].tolist() == reference.token_pool_attention(qkv[1:], 10, None, "logit_sum")[1][0].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_returns_empty_without_launch(backend, device, monkeypatch):
    _skip_unless(backend, device, torch.float32, 8)

    def no_launch():
        raise AssertionError("a backend was loaded for an empty batch")

    monkeypatch.setattr(_backends.get(backend), "load", no_launch)
    qkv = torch.randn(0, 9, 3, 2, 8, device=device, requires_grad=True)
    out, index, scores = fastfer.token_pool_attention(qkv, 4, backend=backend)
    assert out.shape == (0, 5, 16) and index.shape == (0, 5) and scores.shape == (0, 9)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


def test_single_token_plain_attention():
    qkv = torch.randn(2, 1, 3, 2, 8)
    out, index, _ = fastfer.token_pool_attention(qkv, None, backend="torch")
    assert torch.allclose(out, qkv[:, 0, 2].reshape(2, 1, 16))  # one key: the output is its value
    assert index.tolist() == [[0], [0]]


def _tpa(*args, **kw):
    return lambda: fastfer.token_pool_attention(*args, **kw)


BAD_INPUTS = [
    (_tpa("qkv", 3), TypeError, "qkv: expected a torch.Tensor, got str"),
    (_tpa(torch.randn(2, 9, 3, 16), 3), ValueError, "qkv: expected a (B, N, 3, H, D) packed qkv tensor (rank 5), got rank 4 with shape (2, 9, 3, 16)"),
    (_tpa(torch.randn(2, 9, 2, 2, 8), 3), ValueError, "qkv: expected shape (B, N, 3, H, D) with 3 at dim 2, got (2, 9, 2, 2, 8)"),
    (_tpa(torch.randn(1, 9, 3, 1, 300), 3), ValueError, "qkv: expected head dim D ≤ 256, got D=300"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 0), ValueError, "keep: expected 1 ≤ keep ≤ 8 (non-CLS tokens kept out of N-1=8), got 0"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), -1), ValueError, "got -1"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 9), ValueError, "keep: expected 1 ≤ keep ≤ 8"),
    (_tpa(torch.randn(2, 1, 3, 2, 8), 1), ValueError, "keep: expected None for a single token (N=1), got 1"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 2.0), TypeError, "keep: expected an int, got float"),
    (_tpa(torch.ones(2, 9, 3, 2, 8, dtype=torch.int64), 2), TypeError, "qkv: expected dtype float16, bfloat16 or float32, got torch.int64"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 2, scale=float("nan")), ValueError, "scale: expected a finite non-zero float, got nan"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 2, scale=float("inf")), ValueError, "scale: expected a finite non-zero float, got inf"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 2, scale=0.0), ValueError, "got 0.0"),
    (_tpa(torch.randn(2, 9, 3, 2, 8), 2, score="cls_attn"), ValueError, "score: expected one of ('logit_sum', 'prob_mean'), got 'cls_attn'"),
    (_tpa(torch.randn(2, 0, 3, 2, 8), None), ValueError, "qkv: expected N, H and D ≥ 1"),
]


@pytest.mark.parametrize("call,exc,message", BAD_INPUTS, ids=[m[:40] for _, _, m in BAD_INPUTS])
def test_bad_input_errors_name_argument_expected_and_actual(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    _skip_unless(backend, device, torch.float32, 16)
    torch.manual_seed(0)
    op = torch.ops.fastfer.token_pool_attention.default
    qkv = torch.randn(2, 13, 3, 2, 16, device=device, requires_grad=True)
    with fastfer.use_backend(backend):  # the forward op resolves the pinned backend (no backend argument)
        torch.library.opcheck(op, (qkv, 7, None, "logit_sum"))
        torch.library.opcheck(op, (qkv, None, 0.5, "prob_mean"))
        out, index, _, lse = op(qkv.detach(), 7, None, "logit_sum")
    torch.library.opcheck(torch.ops.fastfer.token_pool_attention_backward.default,
                          (torch.randn_like(out), qkv.detach(), out, lse, index, 0.25, backend))
