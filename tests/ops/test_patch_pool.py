"""fastfer::patch_pool on every available backend against the reference: values, indices, gradients,
layouts, edge cases, bad input, opcheck."""
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.backends import registry as _backends
from tests.ops.helpers import assert_rule, backends_for, check_selection, eager_patch_pool, rule_error

BACKENDS = ["triton", "cuda", "cpu", "torch"]
DTYPES = [torch.float32, torch.float16]

# (shape, k): odd sizes, k edge cases 1 and N, APViT's map (C=768, 14×14, K=160)
CASES = [
    ((1, 2, 1, 2), 1),
    ((3, 17, 40), 1),
    ((3, 17, 40), 17),
    ((3, 96, 14, 14), 160),
    ((1, 768, 14, 14), 160),
    ((2, 5, 7, 9), 62),
    ((1, 197, 33), 196),
]


def _skip_unless(backend, device, dtype):
    if backend not in backends_for("patch_pool", device, dtype):
        reasons = _backends.get(backend).not_supported_reasons(_backends.Call("patch_pool", device, dtype)) \
            if backend in dict.fromkeys(b["name"] for b in _backends.backends()) else ["not registered"]
        pytest.skip(f"{backend}: {'; '.join(reasons)}")


def _layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
        wide = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype, device=x.device)
        wide[:, ::2] = x
        yield "strided", wide[:, ::2]  # non-contiguous channel stride
    else:
        wide = torch.randn(x.shape[0], x.shape[1], 2 * x.shape[2], dtype=x.dtype, device=x.device)
        wide[..., 1::2] = x
        yield "strided", wide[..., 1::2]


def check_forward(backend, x, k, pos, score):
    tokens, index, scores = fastfer.patch_pool(x, k, pos=pos, score=score, backend=backend)
    as_tok = reference.as_tokens(x)
    B, N, C = as_tok.shape
    assert tokens.shape == (B, k, C) and tokens.dtype == x.dtype
    assert index.shape == (B, k) and scores.shape == (B, N) and scores.dtype == torch.float32
    ref_tokens, ref_index, _ = reference.patch_pool(x, k, pos, score)
    scores64 = reference.patch_scores(as_tok.double(), score).double()  # fp32 output of an fp64 sum
    exact64 = {"l1": lambda t: t.abs().sum(-1), "sum": lambda t: t.sum(-1), "l2": lambda t: (t * t).sum(-1),
               "max": lambda t: t.amax(-1), "max_abs": lambda t: t.abs().amax(-1)}[score](as_tok.double())
    low_tokens, low_scores = eager_patch_pool(as_tok, index, pos, score)
    assert_rule(scores, exact64, low_scores, f"{backend} scores")
    score_err, _ = rule_error(scores, exact64, low_scores)
    check_selection(scores64, index, ref_index, score_err + 1e-6, f"{backend} index")
    ref64 = reference.gather_tokens(as_tok.double(), index, None if pos is None else pos.double())
    assert_rule(tokens, ref64, low_tokens, f"{backend} tokens")
    return tokens, index


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,k", CASES, ids=str)
def test_forward_matches_reference(backend, dtype, shape, k, device):
    _skip_unless(backend, device, dtype)
    torch.manual_seed(sum(shape) + k)
    x = torch.randn(*shape, device=device).to(dtype)
    N = shape[1] if len(shape) == 3 else shape[2] * shape[3]
    C = shape[2] if len(shape) == 3 else shape[1]
    pos = torch.randn(N, C, device=device).to(dtype)
    for name, xl in _layouts(x):
        check_forward(backend, xl, k, pos if name == "contiguous" else None, "l1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", reference.PATCH_SCORES)
def test_every_score_kind(backend, score, device):
    _skip_unless(backend, device, torch.float32)
    torch.manual_seed(7)
    x = torch.randn(2, 24, 7, 7, device=device)
    check_forward(backend, x, 30, None, score)
    check_forward(backend, x.contiguous(memory_format=torch.channels_last), 30, torch.randn(49, 24, device=device), score)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tokens"])
def test_backward_matches_reference(backend, dtype, layout, device):
    _skip_unless(backend, device, dtype)
    torch.manual_seed(11)
    shape = (3, 40, 7, 9) if layout != "tokens" else (3, 63, 40)
    x = torch.randn(*shape, device=device).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pos = torch.randn(63, 40, device=device).to(dtype)
    x1, p1 = x.clone().requires_grad_(), pos.clone().requires_grad_()
    tokens, index, _ = fastfer.patch_pool(x1, 31, pos=p1, backend=backend)
    grad = torch.randn_like(tokens)
    gx, gpos = torch.autograd.grad(tokens, (x1, p1), grad)
    assert gx.shape == x.shape and gpos.shape == pos.shape
    # fp64 reference gradient with the backend's own selection, and the eager low-precision baseline
    x64, p64 = x.double().requires_grad_(), pos.double().requires_grad_()
    ref = reference.gather_tokens(reference.as_tokens(x64), index, p64)
    rx, rpos = torch.autograd.grad(ref, (x64, p64), grad.double())
    xl, pl = x.clone().requires_grad_(), pos.clone().requires_grad_()
    low, _ = eager_patch_pool(reference.as_tokens(xl), index, pl, "l1")
    lx, lpos = torch.autograd.grad(low, (xl, pl), grad)
    assert_rule(gx, rx, lx, f"{backend} grad_x")
    assert_rule(gpos, rpos, lpos, f"{backend} grad_pos")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lower_index(backend, device):
    _skip_unless(backend, device, torch.float32)
    torch.manual_seed(5)
    x = torch.randn(2, 30, 9, device=device)  # (B, N, C) tokens
    x[:, [3, 11, 20, 27]] = x[:, 5:6].clone()  # five identical positions share one score
    scores = reference.patch_scores(x)
    k = int((scores[0] > scores[0, 5]).sum()) + 2  # the cut falls inside the tied group of image 0
    _, index, _ = fastfer.patch_pool(x, k, backend=backend)
    _, ref_index, _ = reference.patch_pool(x, k)
    assert torch.equal(index.cpu(), ref_index.cpu())
    assert set(index[0].tolist()) & {3, 5, 11, 20, 27} == {3, 5}  # the two lowest tied positions
    fmap = x.transpose(1, 2).reshape(2, 9, 5, 6)  # same positions as a (B, C, H, W) map
    assert torch.equal(fastfer.patch_pool(fmap, k, backend=backend).index.cpu(), ref_index.cpu())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_scores_rank_lowest(backend, device):
    _skip_unless(backend, device, torch.float32)
    torch.manual_seed(3)
    x = torch.randn(2, 12, 5, 5, device=device)
    x[0, 4, 1, 1] = float("nan")  # position 6 of image 0
    x[1, :, 0, 0] = float("nan")  # position 0 of image 1
    _, index, scores = fastfer.patch_pool(x, 24, backend=backend)
    assert scores[0, 6].isnan() and scores[1, 0].isnan()
    assert 6 not in index[0].tolist() and 0 not in index[1].tolist()
    _, index_all, _ = fastfer.patch_pool(x, 25, backend=backend)
    assert index_all[0].tolist() == list(range(25))  # k = N still keeps everything, NaN included


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_returns_empty_without_launch(backend, device, monkeypatch):
    _skip_unless(backend, device, torch.float32)

    def no_launch():
        raise AssertionError("a backend was loaded for an empty batch")

    monkeypatch.setattr(_backends.get(backend), "load", no_launch)
    x = torch.randn(0, 8, 3, 3, device=device, requires_grad=True)
    tokens, index, scores = fastfer.patch_pool(x, 4, pos=torch.randn(9, 8, device=device), backend=backend)
    assert tokens.shape == (0, 4, 8) and index.shape == (0, 4) and scores.shape == (0, 9)
    tokens.sum().backward()
    assert x.grad.shape == x.shape


BAD_INPUTS = [
    (lambda: fastfer.patch_pool([1.0], 1), TypeError, "x: expected a torch.Tensor, got list"),
    (lambda: fastfer.patch_pool(torch.randn(4, 5), 1), ValueError, "x: expected a (B, C, H, W) feature map or (B, N, C) token tensor (rank 3 or 4), got rank 2"),
    (lambda: fastfer.patch_pool(torch.randn(1, 2, 3, 4, 5), 1), ValueError, "got rank 5"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 0), ValueError, "k: expected 1 ≤ k ≤ 9"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), -2), ValueError, "got -2"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 10), ValueError, "k: expected 1 ≤ k ≤ 9 (positions kept out of N=9), got 10"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2.5), TypeError, "k: expected an int, got float"),
    (lambda: fastfer.patch_pool(torch.ones(2, 4, 3, 3, dtype=torch.int32), 2), TypeError, "x: expected dtype float16, bfloat16 or float32, got torch.int32"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2, score="mean"), ValueError, "score: expected one of ('l1', 'sum', 'l2', 'max', 'max_abs'), got 'mean'"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2, pos=torch.randn(4, 9)), ValueError, "pos: expected shape (N, C) = (9, 4) to match x, got (4, 9)"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2, pos=torch.randn(9, 4, device="meta")), ValueError, "pos: expected a tensor on x's device cpu, got meta"),
    (lambda: fastfer.patch_pool(torch.randn(2, 0, 4), 1), ValueError, "x: expected at least one position and one channel"),
    (lambda: fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2, backend="cuda-graph"), ValueError, "backend: expected one of"),
]


@pytest.mark.parametrize("call,exc,message", BAD_INPUTS, ids=[m[:40] for _, _, m in BAD_INPUTS])
def test_bad_input_errors_name_argument_expected_and_actual(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_unsupported_dtype_for_forced_backend_lists_every_backend():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with pytest.raises(_backends.BackendUnavailable) as info:
        fastfer.patch_pool(x, 2, backend="triton")
    text = str(info.value)
    assert "backend 'triton' was requested" in text and "dtype torch.float64 not in" in text
    assert "  torch   ok" in text
    assert fastfer.patch_pool(x, 2).tokens.dtype == torch.float64  # automatic choice falls back to torch


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    _skip_unless(backend, device, torch.float32)
    torch.manual_seed(0)
    op = torch.ops.fastfer.patch_pool.default
    x = torch.randn(2, 6, 4, 5, device=device, requires_grad=True)
    pos = torch.randn(20, 6, device=device, requires_grad=True)
    with fastfer.use_backend(backend):  # the forward op resolves the pinned backend (no backend argument)
        torch.library.opcheck(op, (x, 7, pos, "l1"))
        xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        torch.library.opcheck(op, (xcl, 7, None, "max"))
        torch.library.opcheck(op, (torch.randn(3, 11, 5, device=device, requires_grad=True), 11, None, "l2"))
    grad = torch.randn(2, 7, 6, device=device)
    index = torch.stack([torch.randperm(20, device=device)[:7].sort().values for _ in range(2)])
    torch.library.opcheck(torch.ops.fastfer.patch_pool_backward.default,
                          (grad, index, [2, 6, 4, 5], False, torch.float32, backend))
