"""Conv-cut weights: timm ConvNeXt → trunk by name (fastfer/models/convert/conv_cut.py), Keras head names →
DET/head with layout transposes and classifier rows permuted to the canonical order (…/conv_cut_keras.py; the
whole Keras model, trunk included, is tested in test_conv_cut_keras.py)."""
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.convnext import ConvNeXt

import fastfer.models.conv_cut  # noqa: F401
from fastfer.cli import main as cli_main
from fastfer.labels import NATIVE_ORDERS, order_map
from fastfer.models.convert.conv_cut import convnext_to_convcut, load_convnext_trunk
from fastfer.models.convert.conv_cut_keras import keras_head_to_convcut

TINY_DIMS = (16, 32, 64, 128)


def small_convnext():
    """A timm ConvNeXt with conv_cut_tiny's widths (stage 2 has 3 blocks, one more than the cut keeps)."""
    torch.manual_seed(0)
    net = ConvNeXt(depths=(1, 1, 3, 1), dims=TINY_DIMS, num_classes=5).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # layer scale starts at 1e-6: make every block count
    return net


def tiny(**kw):
    torch.manual_seed(1)
    return timm.create_model("conv_cut_tiny", **kw).eval()


def test_trunk_loads_by_name_and_matches_timm_through_the_cut():
    ref = small_convnext()
    model = tiny()
    dropped = load_convnext_trunk(model, ref.state_dict())
    assert {"stages.2.blocks.1.mlp.fc1.weight", "stages.2.blocks.1.gamma", "stages.2.blocks.2.conv_dw.weight",
            "stages.3.downsample.1.weight", "head.fc.weight"} <= set(dropped)
    assert "stages.2.blocks.1.conv_dw.weight" not in dropped and "stages.2.blocks.1.norm.bias" not in dropped
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = ref.stages[2].downsample(ref.stages[1](ref.stages[0](ref.stem(x))))
        y = ref.stages[2].blocks[0](y)
        b = ref.stages[2].blocks[1]
        y = b.norm(b.conv_dw(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(model.forward_trunk(x), y, rtol=0, atol=1e-6)


def test_block_boundary_cut_keeps_the_whole_last_block():
    ref = small_convnext()
    model = tiny(cut="block22")
    load_convnext_trunk(model, ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = ref.stages[2].blocks[:2](ref.stages[2].downsample(ref.stages[1](ref.stages[0](ref.stem(x)))))
        torch.testing.assert_close(model.forward_trunk(x), y, rtol=0, atol=1e-6)


def test_trunk_weights_argument_and_cli(tmp_path):
    src = tmp_path / "convnext.safetensors"
    save_file(small_convnext().state_dict(), str(src))
    model = tiny(trunk_weights=str(src))
    dst = tmp_path / "trunk.safetensors"
    assert cli_main(["convert", "--from", "convnext-b", str(src), str(dst)]) == 0
    written = load_file(str(dst))
    assert all(k.startswith("base_model.") for k in written)
    assert torch.equal(written["base_model.stem.0.weight"], model.base_model.stem[0].weight)


def test_trunk_errors():
    sd = small_convnext().state_dict()
    with pytest.raises(ValueError, match="original FB ConvNeXt layout"):
        convnext_to_convcut({"downsample_layers.0.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no 'stem.0.weight'"):
        convnext_to_convcut({"conv.weight": torch.zeros(1)})
    del sd["stages.1.blocks.0.conv_dw.weight"]
    with pytest.raises(ValueError, match=r"does not fit the trunk: missing \['base_model.stages.1.blocks.0.conv_dw"):
        load_convnext_trunk(tiny(), sd)


def to_keras(model, native):
    """The released Keras head's weights from a keras_batch-mode model (docs/models/convcut.md §9 names and layouts)."""
    sd = model.state_dict()
    def dw(t):  # (C, 1, k, k) → Keras (k, k, C, 1)
        return t.permute(2, 3, 0, 1).numpy()

    def pw(t):  # (C_out, C_in, 1, 1) → Keras (1, 1, C_in, C_out)
        return t.permute(2, 3, 1, 0).numpy()

    rows = list(order_map(native, model.label_names))  # native row i = canonical row rows[i]
    out = {}
    for i, suffix in ((1, ""), (2, "_1")):
        p = f"model/patch_extraction/patch_extraction/separable_conv2d{suffix}/"
        out[p + "depthwise_kernel:0"] = dw(sd[f"patch_extraction.conv{i}.depthwise.weight"])
        out[p + "pointwise_kernel:0"] = pw(sd[f"patch_extraction.conv{i}.pointwise.weight"])
        out[p + "bias:0"] = sd[f"patch_extraction.conv{i}.pointwise.bias"].numpy()
    pre = "pre_classification/pre_classification/"
    out[pre + "dense_4/kernel:0"] = sd["pre_classification.dense.weight"].t().numpy()
    out[pre + "dense_4/bias:0"] = sd["pre_classification.dense.bias"].numpy()
    for keras, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                              ("moving_variance", "running_var")):
        out[pre + f"batch_normalization/{keras}:0"] = sd[f"pre_classification.batch_normalization.{torch_name}"].numpy()
    out["attention/attention/scale:0"] = sd["attention.scale"].numpy()
    out["classification_head/classification_head/kernel:0"] = sd["classification_head.weight"][rows].t().numpy()
    out["classification_head/classification_head/bias:0"] = sd["classification_head.bias"][rows].numpy()
    out["base_model/convnext_base_stage_2_block_23_layernorm/gamma:0"] = torch.ones(3).numpy()  # trunk: ignored
    return out


@pytest.mark.parametrize("num_classes, native", [(7, NATIVE_ORDERS["conv_cut_rafdb"]),
                                                 (8, NATIVE_ORDERS["conv_cut_ferplus"])])
def test_keras_head_converts_with_rows_in_canonical_order(num_classes, native):
    source = tiny(attention="keras_batch", num_classes=num_classes)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
        source.pre_classification.batch_normalization.running_var.uniform_(0.5, 1.5)
    converted = keras_head_to_convcut(to_keras(source, native))
    target = tiny(attention="keras_batch", num_classes=num_classes)
    result = target.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("base_model.") for k in result.missing_keys)
    target.base_model.load_state_dict(source.base_model.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with pytest.warns(RuntimeWarning):
        torch.testing.assert_close(target(x), source(x))


def test_keras_head_errors():
    with pytest.raises(ValueError, match="unknown names"):
        keras_head_to_convcut({"pre_classification/dense/kernel:0": torch.zeros(4, 2).numpy(),
                               "pre_classification/mystery/w:0": torch.zeros(1).numpy()})
    with pytest.raises(ValueError, match="no 'classification_head/kernel'"):
        keras_head_to_convcut({"attention/scale:0": torch.ones(()).numpy()})
    with pytest.raises(ValueError, match="native_labels: required for a 5-class head"):
        keras_head_to_convcut({"classification_head/kernel:0": torch.zeros(32, 5).numpy()})
