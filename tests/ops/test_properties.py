"""Property test: on random shapes and k, every available backend agrees with the reference."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastfer
from fastfer.ops import reference
from tests.ops.helpers import backends_for

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(B=st.integers(1, 3), C=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 9), data=st.data())
def test_patch_pool_backends_agree(B, C, H, W, data, device):
    k = data.draw(st.integers(1, H * W), label="k")
    channels_last = data.draw(st.booleans(), label="channels_last")
    score = data.draw(st.sampled_from(reference.PATCH_SCORES), label="score")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    x = torch.randn(B, C, H, W, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = reference.patch_pool(x, k, None, score)
    for backend in backends_for("patch_pool", device, torch.float32):
        tokens, index, scores = fastfer.patch_pool(x, k, score=score, backend=backend)
        torch.testing.assert_close(scores, ref[2], rtol=1e-5, atol=1e-5)
        ordered = ref[2].sort(dim=1, descending=True).values
        safe = (ordered[:, k - 1] - ordered[:, k]) > 1e-4 if k < H * W else torch.ones(B, dtype=torch.bool)
        assert torch.equal(index[safe], ref[1][safe]), backend
        assert torch.equal(tokens[safe], ref[0][safe]), backend


@SETTINGS
@given(B=st.integers(1, 2), N=st.integers(2, 70), H=st.integers(1, 4), D=st.sampled_from([8, 16, 24, 40, 64]),
       data=st.data())
def test_token_pool_backends_agree(B, N, H, D, data, device):
    keep = data.draw(st.one_of(st.none(), st.integers(1, N - 1)), label="keep")
    score = data.draw(st.sampled_from(reference.CLS_SCORES), label="score")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    qkv = torch.randn(B, N, 3, H, D, device=device)
    ref_out, ref_index, ref_scores, _ = reference.token_pool_attention(qkv, keep, None, score)
    for backend in backends_for("token_pool_attention", device, torch.float32, D):
        out, index, scores = fastfer.token_pool_attention(qkv, keep, score=score, backend=backend)
        torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
        if keep is not None:
            ordered = ref_scores[:, 1:].sort(dim=1, descending=True).values
            gap = ordered[:, keep - 1] - ordered[:, keep] if keep < N - 1 else torch.full((B,), 1.0)
            safe = gap > 1e-4 * ordered.abs().amax(1).clamp_min(1)
        else:
            safe = torch.ones(B, dtype=torch.bool, device=device)
        assert torch.equal(index[safe], ref_index[safe]), backend
        torch.testing.assert_close(out[safe], ref_out[safe], rtol=1e-4, atol=2e-5)
