"""AttentivePatchPool against a plain-PyTorch composition (Σ|x| over channels, topk, sort, gather, + pos)."""
import pytest
import torch

import fastfer

from fastfer.nn import AttentivePatchPool


def _plain(x, k, pos):
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    index = tokens.abs().sum(-1).topk(k, dim=1).indices.sort(dim=1).values
    picked = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return picked + pos[index], index


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attentive_patch_pool_matches_plain(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    pos = torch.randn(35, 8, requires_grad=True)
    pool = AttentivePatchPool(20)
    with fastfer.use_backend(backend):
        out = pool(x, pos)
    x_ref, pos_ref = x.detach().clone().requires_grad_(), pos.detach().clone().requires_grad_()
    ref, index = _plain(x_ref, 20, pos_ref)
    assert torch.equal(pool.last_index, index)
    assert pool.last_scores.shape == (2, 35)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # a gather and one fp32 add: exact
    g = torch.randn_like(out)
    with fastfer.use_backend(backend):
        out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
    torch.testing.assert_close(pos.grad, pos_ref.grad, rtol=1e-6, atol=1e-6)


def test_attentive_patch_pool_tokens_input_and_no_pos():
    x = torch.randn(3, 10, 4)
    out = AttentivePatchPool(3)(x)
    index = x.abs().sum(-1).topk(3).indices.sort().values
    assert torch.equal(out, x.gather(1, index[..., None].expand(-1, -1, 4)))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_attentive_patch_pool_bad_k(k):
    with pytest.raises(ValueError, match=r"k: expected a positive int"):
        AttentivePatchPool(k)


def test_attentive_patch_pool_k_larger_than_map():
    with pytest.raises(ValueError, match="k"):
        AttentivePatchPool(50)(torch.randn(1, 4, 5, 5))
