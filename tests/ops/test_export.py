"""fastfer.ops.export: the custom ops lowered to the reference for export — by the reference_ops context while
tracing and by decompose() on a traced program; the portable (ONNX) top-k keeps the reference's tie rule."""
import numpy as np
import pytest
import torch

import fastfer
from fastfer.ops import reference
from fastfer.ops.export import custom_op_nodes, decompose, reference_ops, select_topk_portable
from tests.ops.test_compile import TinyPooledNet

CUSTOM = {"fastfer.patch_pool.default", "fastfer.token_pool_attention.default"}


@pytest.mark.parametrize("portable", [False, True])
def test_reference_ops_context_traces_plain_aten(portable):
    torch.manual_seed(0)
    net = TinyPooledNet("torch").eval()
    img = torch.randn(3, 3, 8, 8)
    before = fastfer.ops.patch_pool, fastfer.ops.token_pool_attention, fastfer.patch_pool
    with reference_ops(portable):
        program = torch.export.export(net, (img,))
    assert (fastfer.ops.patch_pool, fastfer.ops.token_pool_attention, fastfer.patch_pool) == before
    assert custom_op_nodes(program) == []
    torch.testing.assert_close(program.module()(img), net(img))


@pytest.mark.parametrize("portable", [False, True])
def test_decompose_rewrites_custom_op_nodes(portable):
    torch.manual_seed(1)
    net = TinyPooledNet("torch").eval()
    img = torch.randn(2, 3, 8, 8)
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
