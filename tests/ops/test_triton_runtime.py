"""The Triton backend's launch machinery: 1-D grids whose index arithmetic holds past 65,535 heads, the head-dim
split, the TF32 choice, fixed configs in the interpreter, and every GPU candidate tile computing the same thing.

Grids: every kernel runs on a 1-D grid (CUDA caps grid axes 1 and 2 at 65,535 programs), and the index
arithmetic that maps a program id back to (image, head, block) must stay right when B·H > 65,535.

Running 66,000 programs in the interpreter would take minutes, so the interpreter's grid loop is sampled:
every program id is still visited, but only the programs of a few chosen images (first, last, around 2¹⁵ and
2¹⁶ heads) execute; their outputs are checked against the reference on those images, and every other output
stays poisoned. Real launches at this size run on a GPU (tests/ops/test_cuda.py).
"""
from __future__ import annotations

import contextlib
import inspect

import pytest
import torch

from fastfer.ops import reference
from fastfer.ops.backends.triton import interpreting

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or not interpreting(),
                                reason="samples the Triton interpreter's grid (CPU sessions with TRITON_INTERPRET=1)")

B, H = 33_000, 2  # B·H = 66,000 programs per query block: past the 65,535 limit of a grid's axes 1 and 2
IMAGES = (0, 1, 16_383, 16_384, 32_767, 32_768, B - 1)


class _SampledProgram:
    """Stands in for the interpreted kernel body: runs only programs whose image is in ``images``."""

    def __init__(self, fn, images, launches, batch):
        self.fn, self.images, self.launches, self.batch = fn, set(images), launches, batch
        self.__globals__ = fn.__globals__  # the interpreter patches triton.language through these
        self.__signature__ = inspect.signature(fn)
        self.__name__ = fn.__name__

    def __call__(self, **kwargs):
        from triton.runtime.interpreter import interpreter_builder as ib

        total, rows, depth = ib.grid_dim
        assert rows == 1 and depth == 1, f"{self.fn.__name__}: grid {ib.grid_dim} is not 1-D"
        assert total % self.batch == 0, f"{self.fn.__name__}: {total} programs are not a whole number per image"
        pid = ib.grid_idx[0]
        if pid == 0:
            self.launches.append((self.fn.__name__, total))
        if pid // (total // self.batch) in self.images:  # image is the outermost coordinate of every grid
            self.fn(**kwargs)


@contextlib.contextmanager
def sampled_grid(monkeypatch, images=IMAGES, batch=B):
    from triton.runtime import interpreter

    launches: list[tuple[str, int]] = []
    original = interpreter.GridExecutor.__init__

    def init(self, fn, *args, **kwargs):
        original(self, fn, *args, **kwargs)
        self.fn = _SampledProgram(fn, images, launches, batch)

    monkeypatch.setattr(interpreter.GridExecutor, "__init__", init)
    yield launches
    monkeypatch.setattr(interpreter.GridExecutor, "__init__", original)


@pytest.mark.parametrize("keep,score", [(2, "logit_sum"), (2, "prob_mean"), (None, "logit_sum")])
def test_attention_index_arithmetic_past_65535_heads(monkeypatch, keep, score):
    from fastfer.ops.backends.triton import api

    torch.manual_seed(0)
    N, D = 4, 16
    qkv = torch.randn(B, N, 3, H, D)
    scale = D**-0.5
    chosen = list(IMAGES)
    with sampled_grid(monkeypatch) as launches:
        out, index, scores, lse = api.token_pool_attention(qkv, keep, scale, score)
        grad = torch.randn_like(out)
        dqkv = api.token_pool_attention_backward(grad, qkv, out, lse, index, scale)
    assert {name for name, _ in launches} >= {"_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"}
    assert max(total for _, total in launches) >= B * H > 65_535

    ref_out, ref_index, ref_scores, ref_lse = reference.token_pool_attention(qkv[chosen], keep, scale, score)
    assert torch.equal(index[chosen], ref_index)
    torch.testing.assert_close(scores[chosen], ref_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[chosen], ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse[chosen], ref_lse, rtol=1e-5, atol=1e-6)
    ref_dqkv = reference.token_pool_attention_backward(grad[chosen], qkv[chosen], ref_out, ref_lse, ref_index, scale)
    torch.testing.assert_close(dqkv[chosen], ref_dqkv, rtol=1e-5, atol=1e-5)
    others = torch.ones(B, dtype=torch.bool)
    others[chosen] = False
    assert out[others].isnan().all(), "programs outside the sample ran (the sampling is broken)"


def test_patch_pool_index_arithmetic_past_65535_images(monkeypatch):
    from fastfer.ops.backends.triton import api

    torch.manual_seed(1)
    images = 70_000
    x = torch.randn(images, 3, 2, 3)
    pos = torch.randn(6, 3)
    chosen = [0, 1, 65_535, 65_536, images - 1]
    with sampled_grid(monkeypatch, chosen, images) as launches:
        tokens, index, scores = api.patch_pool(x, 4, pos, "l1")
        grad = torch.randn_like(tokens)
        grad_x, _ = api.patch_pool_backward(grad, index, tuple(x.shape), False, pos.dtype)
    assert {name for name, _ in launches} == {"_patch_pool_fwd_kernel", "_patch_pool_bwd_kernel"}
    ref_tokens, ref_index, ref_scores = reference.patch_pool(x[chosen], 4, pos, "l1")
    assert torch.equal(index[chosen], ref_index)
    torch.testing.assert_close(tokens[chosen], ref_tokens)
    ref_grad_x, _ = reference.patch_pool_backward(grad[chosen], ref_index, tuple(x[chosen].shape), False, None)
    torch.testing.assert_close(grad_x[chosen], ref_grad_x)


# --- configs, precision, head-dim split ---------------------------------------------------------------------


def test_head_dim_split_covers_d_with_two_powers_of_two():
    from fastfer.ops.backends.triton.attention import head_dim_split

    assert head_dim_split(96) == (64, 32) and head_dim_split(64) == (64, 0) and head_dim_split(40) == (32, 16)
    assert head_dim_split(8) == (16, 0) and head_dim_split(256) == (256, 0) and head_dim_split(200) == (128, 128)
    for D in range(1, 257):
        d0, d1 = head_dim_split(D)
        assert d0 + d1 >= D and d0 >= 16 and (d1 == 0 or d1 >= 16)


def test_fp32_dots_follow_torch_tf32_setting():
    from fastfer.ops.backends.triton import attention, runtime

    with runtime.tf32_matmuls(True):
        assert attention.dot_precision(torch.float32) == "tf32"
        assert attention.family(torch.float32, 96) == ("tf32", 96)
    with runtime.tf32_matmuls(False):
        assert attention.dot_precision(torch.float32) == "tf32x3"  # fp32-level accuracy on tensor cores
    assert attention.family(torch.bfloat16, 64) == ("half", 64)


def test_every_family_has_gpu_candidates():
    from fastfer.ops.backends.triton import attention

    for kind, table in attention.CANDIDATES.items():
        assert {key for key in table} == {(p, w) for p in ("half", "tf32", "tf32x3") for w in (64, 128, 256)}, kind
        assert all(1 <= len(v) <= 3 for v in table.values()), kind


def test_interpreter_runs_one_fixed_config_and_never_autotunes(monkeypatch):
    import triton

    from fastfer.ops.backends.triton import api

    def no_autotune(*args, **kwargs):
        raise AssertionError("autotuning under the interpreter")

    monkeypatch.setattr(triton, "autotune", no_autotune)
    qkv = torch.randn(2, 9, 3, 2, 16)
    out, index, _, _ = api.token_pool_attention(qkv, 4, 0.25, "logit_sum")
    torch.testing.assert_close(out, reference.token_pool_attention(qkv, 4, 0.25, "logit_sum")[0])


def _gpu_tiles():
    from fastfer.ops.backends.triton import attention

    return sorted({(m, n) for table in attention.CANDIDATES.values() for tiles in table.values() for m, n, _ in tiles})


@pytest.mark.parametrize("D", [40, 96])
def test_every_gpu_candidate_tile_computes_the_reference(D):
    """The GPU candidates' block shapes, forced in the interpreter: masks and tails must not depend on the tile."""
    from fastfer.ops.backends.triton import api, runtime
    from fastfer.ops.backends.triton.runtime import config

    torch.manual_seed(D)
    qkv = torch.randn(1, 37, 3, 2, D)
    scale = D**-0.5
    ref_out, ref_index, ref_scores, ref_lse = reference.token_pool_attention(qkv, 20, scale, "prob_mean")
    grad = torch.randn_like(ref_out)
    ref_dqkv = reference.token_pool_attention_backward(grad, qkv, ref_out, ref_lse, ref_index, scale)
    for m, n in _gpu_tiles():
        tile = config(BLOCK_M=m, BLOCK_N=n)
        with runtime.force_configs({"attn_fwd": tile, "attn_bwd_dkdv": tile, "attn_bwd_dq": tile}):
            out, index, scores, lse = api.token_pool_attention(qkv, 20, scale, "prob_mean")
            dqkv = api.token_pool_attention_backward(grad, qkv, out, lse, index, scale)
        assert torch.equal(index, ref_index), (m, n)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6, msg=lambda e: f"tile {m}x{n}: {e}")
        torch.testing.assert_close(dqkv, ref_dqkv, rtol=1e-5, atol=1e-5, msg=lambda e: f"tile {m}x{n}: {e}")


def test_autotuning_can_be_switched_off(monkeypatch):
    """FASTFER_TRITON_AUTOTUNE=0 runs the first candidate on a GPU too (seen here as a non-interpreted launch)."""
    from fastfer.ops.backends.triton import api, runtime

    def no_tuner(self, family):
        raise AssertionError("autotuner used although FASTFER_TRITON_AUTOTUNE=0")

    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(runtime.Tunable, "tuner", no_tuner)
    monkeypatch.setenv("FASTFER_TRITON_AUTOTUNE", "0")
    qkv = torch.randn(2, 9, 3, 2, 16)
    out, _, _, _ = api.token_pool_attention(qkv, None, 0.25, "logit_sum")
    torch.testing.assert_close(out, reference.token_pool_attention(qkv, None, 0.25, "logit_sum")[0])


def test_head_dim_split_can_be_switched_off_for_the_gpu_ab(monkeypatch):
    from fastfer.ops.backends.triton import api
    from fastfer.ops.backends.triton.attention import head_dim_split

    monkeypatch.setenv("FASTFER_TRITON_SPLIT_D", "0")
    assert head_dim_split(96) == (128, 0) and head_dim_split(40) == (64, 0)
    qkv = torch.randn(1, 9, 3, 2, 40)
    out, _, _, _ = api.token_pool_attention(qkv, 5, 0.2, "logit_sum")
    torch.testing.assert_close(out, reference.token_pool_attention(qkv, 5, 0.2, "logit_sum")[0])
