"""fastfer.export / fastfer export: exported programs and ONNX files (dynamic batch) match PyTorch, contain no
fastfer custom ops and carry the labels; errors. The op-side lowering is tested in tests/ops/test_export.py."""
import argparse
import json
import sys

import numpy as np
import pytest
import torch

import fastfer.models
from fastfer.cli import export as cli_export
from fastfer.infer import export_model, load_exported
from fastfer.ops.lowering import custom_op_nodes
from fastfer.train.checkpoint import save_weights

MICRO = dict(ir_widths=(8, 8), embed_dim=32, depth=2, num_heads=2, keep_rates=(1.0, 0.9), patch_keep=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fastfer.models.create_model("apvit_tiny", **MICRO).eval()
    torch.nn.init.normal_(m.head.weight, std=0.5)
    return m


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.safetensors"
    cfg = model.pretrained_cfg
    save_weights(path, model.state_dict(), dict(
        model="apvit_tiny", model_kwargs=MICRO, num_classes=7, label_names=list(model.label_names),
        preprocessing=dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"]))))
    return path


def _cli(argv):
    parser = argparse.ArgumentParser()
    cli_export.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_torch_export_round_trip(model, checkpoint, tmp_path):
    """Static batch 3 from a checkpoint: the saved .pt2 reloads without fastfer ops and matches eager logits."""
    import fastfer.ops

    ops_before = fastfer.ops.patch_pool, fastfer.ops.token_pool_attention
    result = export_model(checkpoint, tmp_path / "m.pt2", format="torch-export", batch=3, dynamic_batch=False)
    assert (fastfer.ops.patch_pool, fastfer.ops.token_pool_attention) == ops_before  # the swap is undone
    assert result.verified_with == "torch.export" and result.max_abs_diff <= 1e-5
    program, meta = load_exported(tmp_path / "m.pt2")
    assert custom_op_nodes(program) == []
    assert json.loads(meta["fastfer.label_names"]) == list(model.label_names)
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception):  # the batch was fixed at export time
        program.module()(torch.randn(2, 3, 112, 112))


def test_onnx_cli_round_trip_with_dynamic_batch(model, checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    out = tmp_path / "apvit.onnx"
    assert _cli(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--batch", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified with onnxruntime" in printed and "dynamic batch" in printed
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["fastfer.label_names"]) == list(model.label_names)
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert not {n.domain for n in proto.graph.node} - {"", "ai.onnx"}  # standard operators only
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # batches other than the traced one
        x = torch.randn(batch, 3, 112, 112)
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_onnx_needs_its_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"fastfer\[onnx\]"):
        export_model(model, tmp_path / "m.onnx", format="onnx", dynamic_batch=False, verify=False)


def test_errors(model, tmp_path, capsys):
    with pytest.raises(ValueError, match="format"):
        export_model(model, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match="batch"):
        export_model(model, tmp_path / "m.pt2", format="torch-export", batch=0)
    from fastfer.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "none.safetensors" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
