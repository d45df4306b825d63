"""fastfer.ops.lowering: the custom ops lowered to the reference for export — by the reference_ops context while
tracing and by decompose() on a traced program; the portable (ONNX) top-k keeps the reference's tie rule."""
import numpy as np
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.lowering import custom_op_nodes, decompose, reference_ops, select_topk_portable
from tests.ops.test_compile import TinyPooledNet

CUSTOM = {"fastfer.patch_pool.default", "fastfer.token_pool_attention.default"}


@pytest.mark.parametrize("portable", [False, True])
def test_reference_ops_context_traces_plain_aten(portable):
    torch.manual_seed(0)
    net = TinyPooledNet().eval()
    img = torch.randn(3, 3, 8, 8)
    before = fastfer.ops.patch_pool, fastfer.ops.token_pool_attention, fastfer.patch_pool
    with reference_ops(portable):
        program = torch.export.export(net, (img,))
    assert (fastfer.ops.patch_pool, fastfer.ops.token_pool_attention, fastfer.patch_pool) == before  # no swap
    assert custom_op_nodes(program) == []
    torch.testing.assert_close(program.module()(img), net(img))


def test_reference_ops_reaches_every_import_path():
    """The public functions check the lowering flag themselves: fastfer.nn layers and fastfer.functional (which
    imported the op names before the block) lower too."""
    from fastfer.nn import Attention
    from fastfer.nn import functional as F

    layer = Attention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    qkv = torch.randn(2, 5, 3, 2, 8)
    with reference_ops():
        program = torch.export.export(layer, (x,))
        fn_program = torch.export.export(_Functional(), (qkv,))
    assert custom_op_nodes(program) == [] and custom_op_nodes(fn_program) == []
    torch.testing.assert_close(fn_program.module()(qkv), F.attention(qkv))


class _Functional(torch.nn.Module):
    def forward(self, qkv):
        from fastfer.nn import functional as F

        return F.attention(qkv)


@pytest.mark.parametrize("portable", [False, True])
def test_decompose_rewrites_custom_op_nodes(portable):
    torch.manual_seed(1)
    net = TinyPooledNet().eval()
    img = torch.randn(2, 3, 8, 8)
    with fastfer.use_backend("torch"):
        program = torch.export.export(net, (img,))
    assert CUSTOM <= set(custom_op_nodes(program))
    lowered = decompose(program, portable=portable)
    assert custom_op_nodes(lowered) == []
    torch.testing.assert_close(lowered.module()(img), net(img))


def test_portable_topk_matches_the_reference_without_ties():
    scores = torch.randn(6, 50)
    torch.testing.assert_close(select_topk_portable(scores, 17), reference.select_topk_positional(scores, 17))
    scores[0, :3] = float("nan")  # NaN never beats a number
    assert not set(select_topk_portable(scores, 40)[0].tolist()) & {0, 1, 2}


def test_onnx_topk_breaks_ties_like_the_reference(tmp_path):
    """ONNX TopK puts equal values in index order, so the portable selection keeps the reference's tie rule in
    onnxruntime (eager torch.topk does not promise an order for ties)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Select(torch.nn.Module):
        def forward(self, scores):
            return select_topk_portable(scores, 20)

    scores = torch.randint(0, 4, (8, 60)).float()  # every row is full of ties
    torch.onnx.export(Select().eval(), (scores,), str(tmp_path / "topk.onnx"), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "topk.onnx"), providers=["CPUExecutionProvider"])
    for seed in range(5):
        scores = torch.randint(0, 4, (8, 60), generator=torch.Generator().manual_seed(seed)).float()
        got = session.run(None, {session.get_inputs()[0].name: scores.numpy()})[0]
        np.testing.assert_array_equal(got, reference.select_topk_positional(scores, 20).numpy())
