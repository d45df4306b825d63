"""fastfer.nn.Attention / TokenPoolAttention against a plain-PyTorch composition (materialised attention,
torch.topk), forward and backward, plus keep-count rules and argument errors."""
import pytest
import torch

import fastfer

from fastfer.nn import Attention, TokenPoolAttention, keep_count
from tests.nn import oracle
from tests.ops.helpers import assert_rule

DIM, HEADS, N = 48, 3, 13  # odd token count, head dim 16


def _weights(module, dtype):
    return [t.detach().to(dtype).requires_grad_() for t in
            (module.qkv.weight, module.qkv.bias, module.proj.weight, module.proj.bias)]


def _grad_out(y):
    """The same incoming gradient for every run of a case, in y's dtype."""
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)


def _plain(module, x, dtype, keep, score="logit_sum"):
    """Plain composition in ``dtype``: (y, index, grads of x and the four weights)."""
    x = x.detach().to(dtype).requires_grad_()
    w = _weights(module, dtype)
    y, index = oracle.token_pool_attention(x, *w, module.num_heads, module.scale, keep, score)
    y.backward(_grad_out(y))
    return y, index, [x.grad] + [t.grad for t in w]


def _fused(module, x, dtype, pooled):
    module = module.to(dtype)
    x = x.detach().to(dtype).requires_grad_()
    module.zero_grad()
    out = module(x)
    y, index = out if pooled else (out, None)
    y.backward(_grad_out(y))
    grads = [x.grad, module.qkv.weight.grad, module.qkv.bias.grad, module.proj.weight.grad, module.proj.bias.grad]
    return y, index, grads


def _check(module, x, dtype, keep, pooled, score="logit_sum"):
    y64, idx64, g64 = _plain(module.double(), x, torch.float64, keep, score)
    y_lo, _, g_lo = _plain(module, x, dtype, keep, score)
    y, index, grads = _fused(module, x, dtype, pooled)
    if pooled and keep is not None:
        assert torch.equal(index, idx64), "kept tokens differ from the plain top-k"
    elif pooled:
        assert index is None
    assert y.dtype == dtype
    assert_rule(y, y64, y_lo, "output")
    for name, a, ref, lo in zip(["x", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"], grads, g64, g_lo):
        assert_rule(a, ref, lo, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_matches_plain_composition(backend, dtype):
    torch.manual_seed(0)
    module = Attention(DIM, HEADS, qkv_bias=True)
    with fastfer.use_backend(backend):
        _check(module, torch.randn(2, N, DIM), dtype, None, pooled=False)
    assert module.last_scores.shape == (2, N) and module.last_scores.dtype == torch.float32


@pytest.mark.parametrize("score", ["logit_sum", "prob_mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.backend("torch")
def test_token_pool_attention_matches_plain_composition(score, dtype):
    torch.manual_seed(0)
    module = TokenPoolAttention(DIM, HEADS, keep_rate=0.5, score=score, qkv_bias=True)
    torch.nn.init.normal_(module.qkv.weight, std=0.3)  # peaked CLS row: clear margins between scores
    _check(module, torch.randn(3, N, DIM), dtype, keep=6, pooled=True, score=score)
    assert module.last_index.shape == (3, 7) and module.last_scores.shape == (3, N)


@pytest.mark.backend("triton")
def test_token_pool_attention_triton_backend_and_exact_keep():
    torch.manual_seed(0)
    module = TokenPoolAttention(DIM, HEADS, keep=4, score="prob_mean", qkv_bias=True)
    torch.nn.init.normal_(module.qkv.weight, std=0.3)
    _check(module, torch.randn(2, N, DIM), torch.float32, keep=4, pooled=True, score="prob_mean")


@pytest.mark.backend("torch")
def test_no_pooling_returns_every_index():
    module = TokenPoolAttention(DIM, HEADS, keep_rate=1.0)
    assert not module.pools
    y, index = module(torch.randn(2, N, DIM))
    assert y.shape == (2, N, DIM) and torch.equal(index, torch.arange(N).expand(2, N))
    assert torch.equal(module.last_index, torch.arange(N).expand(2, N))


@pytest.mark.parametrize("n_tokens, rate, rule, expected", [
    (197, 0.7, "apvit", 137), (197, 0.7, "evit", 138),  # DeiT-S: int(137.2) vs ceil(137.2)
    (161, 0.9, "apvit", 144),  # APViT 161 → 145 tokens
    (101, 0.55, "evit", 56),  # EViT's math.ceil as written: 0.55·100 = 55.00000000000001 → 56
    (101, 0.55, "apvit", 55),
    (3, 0.1, "apvit", 1), (3, 0.1, "evit", 1),  # at least one token
    (17, 1.0, "evit", None), (17, 0.99, "evit", None),  # ceil(15.84) = 16 = N-1: nothing dropped
])
def test_keep_count_rules(n_tokens, rate, rule, expected):
    assert keep_count(n_tokens, rate, rule=rule) == expected


def test_keep_count_exact_keep_wins_and_caps():
    assert keep_count(17, 0.1, keep=5) == 5
    assert keep_count(17, None, keep=40) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(keep_rate=0.0), r"keep_rate: expected a rate in \(0, 1\].*got 0.0"),
    (dict(keep_rate=1.5), r"keep_rate: expected a rate in \(0, 1\].*got 1.5"),
    (dict(keep_rate=-0.2), r"keep_rate: .*got -0.2"),
    (dict(keep_rate="0.5"), r"keep_rate: .*got '0.5'"),
    (dict(keep=0), r"keep: expected a positive int, got 0"),
    (dict(keep=2.5), r"keep: expected a positive int, got 2.5"),
    (dict(score="mean"), r"score: expected one of \('logit_sum', 'prob_mean'\), got 'mean'"),
    (dict(keep_rule="round"), r"keep_rule: expected one of \('apvit', 'evit'\), got 'round'"),
    (dict(scale=0.0), r"scale: expected a positive finite number"),
])
def test_token_pool_attention_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenPoolAttention(DIM, HEADS, **kwargs)


@pytest.mark.parametrize("dim, heads, match", [
    (50, 3, r"num_heads: expected a positive divisor of dim=50, got 3"),
    (48, 0, r"num_heads: expected a positive divisor of dim=48, got 0"),
    (1024, 2, r"expected a head dim ≤ 256, got 1024/2 = 512"),
])
def test_attention_bad_heads(dim, heads, match):
    with pytest.raises(ValueError, match=match):
        Attention(dim, heads)
    with pytest.raises(ValueError, match=match):
        TokenPoolAttention(dim, heads, keep_rate=0.5)
