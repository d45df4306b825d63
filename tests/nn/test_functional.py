"""fastfer.functional: the aliases are the ops, and attention() equals PyTorch SDPA (tolerance rule)."""
import torch
import torch.nn.functional as F

from fastfer.nn import functional as FF
from fastfer import ops
from tests.ops.helpers import assert_rule


def _sdpa(qkv):
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D) each
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


def test_aliases_are_the_ops():
    assert FF.patch_pool is ops.patch_pool and FF.token_pool_attention is ops.token_pool_attention


def test_attention_matches_sdpa_forward_and_backward():
    qkv = torch.randn(2, 13, 3, 3, 24, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref_in = qkv.detach().double().requires_grad_()
    low_in = qkv.detach().clone().requires_grad_()
    out, ref, low = FF.attention(qkv, backend="torch"), _sdpa(ref_in), _sdpa(low_in)
    assert out.shape == (2, 13, 72)
    assert_rule(out, ref, low, "attention")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for t, grad in ((out, g), (ref, g.double()), (low, g)):
        t.backward(grad)
    assert_rule(qkv.grad, ref_in.grad, low_in.grad, "attention d(qkv)")


def test_attention_scale_argument():
    qkv = torch.randn(1, 5, 3, 2, 8)
    out = FF.attention(qkv, scale=0.5, backend="torch")
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2).reshape(1, 5, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_gather_keep_count_kept_positions():
    x = torch.arange(12.0).reshape(1, 4, 3)
    assert torch.equal(FF.gather_tokens(x, torch.tensor([[0, 3]])), x[:, [0, 3]])
    assert FF.keep_count(197, 0.7, rule="evit") == 138
    assert torch.equal(FF.kept_positions([torch.tensor([[0, 2, 3]]), torch.tensor([[0, 2]])])[1],
                       torch.tensor([[0, 3]]))
