"""PoolingBlock against a plain-PyTorch pre-norm block (LN → attention → residual → gather → LN → MLP);
gather_tokens and kept_positions."""
import pytest
import torch
import torch.nn.functional as F

from fastfer.nn import PoolingBlock, gather_tokens, kept_positions
from tests.nn import oracle
from tests.ops.helpers import assert_rule

DIM, HEADS, N = 48, 3, 17


pytestmark = pytest.mark.backend("torch")


def _plain_block(block, x, keep, score):
    """The block's math in x.dtype from its weights, without fastfer."""
    p = {k: v.to(x.dtype) for k, v in block.state_dict().items()}
    h = F.layer_norm(x, (DIM,), p["norm1.weight"], p["norm1.bias"], block.norm1.eps)
    y, index = oracle.token_pool_attention(h, p["attn.qkv.weight"], p.get("attn.qkv.bias"), p["attn.proj.weight"],
                                           p["attn.proj.bias"], HEADS, block.attn.scale, keep, score)
    x = oracle.gather(x, index) + y
    h = F.layer_norm(x, (DIM,), p["norm2.weight"], p["norm2.bias"], block.norm2.eps)
    h = F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    return x + h


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("keep_rate, score, rule", [(None, "logit_sum", "apvit"), (0.6, "logit_sum", "apvit"),
                                                    (0.6, "prob_mean", "evit")])
def test_pooling_block_matches_plain_block(keep_rate, score, rule, dtype):
    torch.manual_seed(0)
    block = PoolingBlock(DIM, HEADS, mlp_ratio=2.0, qkv_bias=True, keep_rate=keep_rate, score=score,
                         keep_rule=rule).eval()
    torch.nn.init.normal_(block.attn.qkv.weight, std=0.3)
    x = torch.randn(2, N, DIM)
    keep = oracle.keep_tokens(N, keep_rate, rule)
    ref = _plain_block(block, x.double(), keep, score)
    low = _plain_block(block, x.to(dtype), keep, score)
    out = block.to(dtype)(x.to(dtype))
    assert out.shape == (2, N if keep is None else 1 + keep, DIM)
    assert_rule(out, ref, low, "PoolingBlock output")


def test_pooling_block_backward_reaches_every_parameter():
    torch.manual_seed(0)
    block = PoolingBlock(DIM, HEADS, qkv_bias=True, keep_rate=0.5)
    x = torch.randn(2, N, DIM, requires_grad=True)
    block(x).square().sum().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert x.grad.abs().sum() > 0


def test_gather_tokens():
    x = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)
    index = torch.tensor([[0, 2, 4], [0, 1, 3]])
    assert torch.equal(gather_tokens(x, index), torch.stack([x[0, [0, 2, 4]], x[1, [0, 1, 3]]]))


def test_kept_positions_composes_layers():
    first = torch.tensor([[0, 2, 3, 5]])  # of 6 tokens
    second = torch.tensor([[0, 2, 3]])  # of those 4: original 0, 3, 5
    out = kept_positions([None, first, None, second])
    assert out[0] is None
    assert torch.equal(out[1], first) and torch.equal(out[2], first)
    assert torch.equal(out[3], torch.tensor([[0, 3, 5]]))


def test_kept_positions_from_blocks_track_original_patches():
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(*[PoolingBlock(DIM, HEADS, keep_rate=r) for r in (None, 0.5, 0.5)])
    blocks(torch.randn(2, N, DIM))
    # last_index of a block that keeps everything is 0..N-1, so it composes as the identity
    positions = kept_positions([b.attn.last_index for b in blocks])
    assert torch.equal(positions[0], torch.arange(N).expand(2, N))
    assert positions[1].shape == (2, 9) and positions[2].shape == (2, 5)
    # tag every token with its position and push the tags through the same gathers
    tags = torch.arange(N, dtype=torch.float32).expand(2, N)[..., None]
    for b in blocks:
        tags = gather_tokens(tags, b.attn.last_index)
    assert torch.equal(tags[..., 0].long(), positions[2])
    assert set(positions[2][0].tolist()) <= set(positions[1][0].tolist())
