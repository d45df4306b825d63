"""FusedViTAttention / FusedViTBlock against the timm modules they replace: same outputs (tolerance rule),
the very same parameters, timm features (qk_norm, scale_norm, LayerScale, drop path), and refusals."""
import copy

import pytest
import torch
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from fastfer.nn import FusedViTAttention, FusedViTBlock
from tests.ops.helpers import assert_rule

DIM, HEADS, N = 64, 4, 11


pytestmark = pytest.mark.backend("torch")


def _timm_attention(**kw):
    torch.manual_seed(0)
    try:
        return TimmAttention(DIM, HEADS, qkv_bias=True, norm_layer=nn.LayerNorm, **kw).eval()
    except TypeError as error:  # older timm: no scale_norm / gated arguments
        pytest.skip(f"this timm's Attention does not take {sorted(kw)}: {error}")


@pytest.mark.parametrize("features", [{}, dict(qk_norm=True), dict(qk_norm=True, scale_norm=True)])
def test_fused_attention_matches_timm(features):
    attn = _timm_attention(**features)
    for m in attn.modules():  # non-trivial norm weights
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    fused = FusedViTAttention(attn)
    assert fused.qkv is attn.qkv and fused.proj is attn.proj and fused.q_norm is attn.q_norm
    assert list(fused.state_dict()) == list(attn.state_dict())
    x = torch.randn(2, N, DIM)
    y, index = fused(x)
    assert not fused.pools and torch.equal(index, torch.arange(N).expand(2, N))  # every token kept
    assert_rule(y, copy.deepcopy(attn).double()(x.double()), attn(x), "FusedViTAttention vs timm Attention")


def test_fused_block_matches_timm_block_in_train_mode():
    """LayerScale and stochastic depth active; same seed → same drop-path draws → same output and grads."""
    torch.manual_seed(0)
    block = TimmBlock(DIM, HEADS, qkv_bias=True, init_values=0.5, drop_path=0.5, proj_drop=0.0).train()
    ref = copy.deepcopy(block)
    fused = FusedViTBlock(block)
    assert fused.training
    x = torch.randn(8, N, DIM)
    torch.manual_seed(1)
    expected = ref(x)
    torch.manual_seed(1)
    out = fused(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    grads = dict(ref.named_parameters())
    for name, p in block.named_parameters():  # the original block's own Parameters received the gradients
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_block_rejects_masks():
    fused = FusedViTBlock(TimmBlock(DIM, HEADS))
    with pytest.raises(ValueError, match="attn_mask / is_causal: not supported"):
        fused(torch.randn(1, N, DIM), attn_mask=torch.zeros(N, N))


def test_refuses_attention_dropout():
    with pytest.raises(ValueError, match=r"attn.attn_drop: expected p=0 .*got p=0.1"):
        FusedViTAttention(_timm_attention(attn_drop=0.1))


def test_refuses_gated_attention():
    attn = _timm_attention(gated=True)
    with pytest.raises(ValueError, match="gated attention"):
        FusedViTAttention(attn)


def _other_attention_modules():
    yield nn.MultiheadAttention(DIM, HEADS)
    import timm.layers

    if hasattr(timm.layers, "AttentionRope"):  # timm ≥ 1.0.16
        yield timm.layers.AttentionRope(DIM, HEADS)


@pytest.mark.parametrize("module", list(_other_attention_modules()), ids=lambda m: type(m).__name__)
def test_refuses_other_attention_types(module):
    with pytest.raises(TypeError, match=type(module).__name__ + " is not supported"):
        FusedViTAttention(module)


def test_refuses_other_block_types():
    with pytest.raises(TypeError, match="Linear is not supported"):
        FusedViTBlock(nn.Linear(4, 4))
