"""The released Conv-cut Keras model → fastfer (fastfer/models/convert/conv_cut_keras.py): Keras applications
ConvNeXt names for the trunk, the Conv-cut head names, layout transposes, a complete model through the CLI.

The Keras weights are synthesised from a fastfer model with the names Keras gives them (ConvNeXtBase layers
``convnext_base_stem_conv``, ``…_downsampling_{layernorm,conv}_{i}``, ``…_stage_{s}_block_{b}_{depthwise_conv,
layernorm,pointwise_conv_1,pointwise_conv_2,layer_scale}``; SeparableConv2D / Dense / BatchNormalization /
Attention weights) and Keras' layouts, nested as a full-model ``.h5`` nests them."""
import sys

import numpy as np
import pytest
import timm
import torch

import fastfer.models  # noqa: F401
from fastfer.cli import main as cli_main
from fastfer.labels import EXPRESSIONS, NATIVE_ORDERS, order_map
from fastfer.models.convert.conv_cut_keras import infer_model_kwargs, keras_to_convcut, read_keras_weights, trunk_key
from fastfer.models.weights import load_model
from fastfer.utils.errors import CheckpointError

P = "convnext_base"  # keras.applications.ConvNeXtBase's layer-name prefix


def _conv(t):  # torch (out, in/groups, kh, kw) → Keras Conv2D (kh, kw, in/groups, out)
    return t.permute(2, 3, 1, 0).numpy()


def _dense(t):  # torch (out, in) → Keras (in, out)
    return t.t().numpy()


def keras_trunk(sd: dict) -> dict:
    """fastfer ``base_model.*`` tensors → the Keras ConvNeXt weights, under a nested full-model path."""
    out = {}
    root = "model_weights/base_model/"
    for key, t in sd.items():
        if not key.startswith("base_model."):
            continue
        k = key[len("base_model."):]
        parts = k.split(".")
        if k.startswith("stem.0."):
            name, value = f"{P}_stem/{P}_stem_conv/" + ("kernel" if parts[-1] == "weight" else "bias"), t
            value = _conv(t) if parts[-1] == "weight" else t.numpy()
        elif k.startswith("stem.1."):
            name, value = f"{P}_stem/{P}_stem_layernorm/" + {"weight": "gamma", "bias": "beta"}[parts[-1]], t.numpy()
        elif ".downsample." in k:
            i = int(parts[1]) - 1
            if parts[3] == "0":
                name = f"{P}_downsampling_block_{i}/{P}_downsampling_layernorm_{i}/" + {"weight": "gamma",
                                                                                        "bias": "beta"}[parts[-1]]
                value = t.numpy()
            else:
                name = f"{P}_downsampling_block_{i}/{P}_downsampling_conv_{i}/" + (
                    "kernel" if parts[-1] == "weight" else "bias")
                value = _conv(t) if parts[-1] == "weight" else t.numpy()
        else:
            s, b = int(parts[1]), int(parts[3])
            layer = f"{P}_stage_{s}_block_{b}_"
            rest = ".".join(parts[4:])
            if rest == "gamma":
                name, value = layer + "layer_scale/Variable", t.numpy()
            elif rest.startswith("conv_dw."):
                name = layer + "depthwise_conv/" + ("kernel" if rest.endswith("weight") else "bias")
                value = _conv(t) if rest.endswith("weight") else t.numpy()
            elif rest.startswith("norm."):
                name, value = layer + "layernorm/" + {"weight": "gamma", "bias": "beta"}[parts[-1]], t.numpy()
            else:
                fc = {"mlp.fc1": "pointwise_conv_1", "mlp.fc2": "pointwise_conv_2"}[rest.rsplit(".", 1)[0]]
                name = layer + fc + "/" + ("kernel" if rest.endswith("weight") else "bias")
                value = _dense(t) if rest.endswith("weight") else t.numpy()
        out[root + name + ":0"] = value
    # Keras' in-model input normalisation (ImageNet statistics): fastfer's preprocessing does it, dropped.
    norm = f"{root}{P}_prestem_normalization/"
    out[norm + "mean:0"] = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    out[norm + "variance:0"] = np.array([58.395, 57.12, 57.375], dtype=np.float32) ** 2
    out[norm + "count:0"] = np.array(0, dtype=np.int64)
    return out


def keras_head(sd: dict, native, labels) -> dict:
    """fastfer DET/head tensors → the Conv-cut Keras head weights (Keras numbering of repeated layers)."""
    rows = list(order_map(native, labels))  # native row i = canonical row rows[i]
    out = {}
    for i, suffix in ((1, ""), (2, "_1")):
        p = f"model_weights/patch_extraction/patch_extraction/separable_conv2d{suffix}/"
        out[p + "depthwise_kernel:0"] = sd[f"patch_extraction.conv{i}.depthwise.weight"].permute(2, 3, 0, 1).numpy()
        out[p + "pointwise_kernel:0"] = sd[f"patch_extraction.conv{i}.pointwise.weight"].permute(2, 3, 1, 0).numpy()
        out[p + "bias:0"] = sd[f"patch_extraction.conv{i}.pointwise.bias"].numpy()
    pre = "model_weights/pre_classification/pre_classification/"
    out[pre + "dense_2/kernel:0"] = _dense(sd["pre_classification.dense.weight"])
    out[pre + "dense_2/bias:0"] = sd["pre_classification.dense.bias"].numpy()
    for keras, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                        ("moving_variance", "running_var")):
        out[pre + f"batch_normalization_1/{keras}:0"] = sd[f"pre_classification.batch_normalization.{name}"].numpy()
    out["model_weights/attention/attention/scale:0"] = sd["attention.scale"].numpy()
    head = "model_weights/classification_head/classification_head/"
    out[head + "kernel:0"] = _dense(sd["classification_head.weight"][rows])
    out[head + "bias:0"] = sd["classification_head.bias"][rows].numpy()
    if "layernorm.weight" in sd:
        out["model_weights/layernorm/layernorm/gamma:0"] = sd["layernorm.weight"].numpy()
        out["model_weights/layernorm/layernorm/beta:0"] = sd["layernorm.bias"].numpy()
    return out


def released_like(num_classes=7, det_norm=False):
    """A randomised keras_batch-mode conv_cut_tiny and its Keras weights (+ optimizer slots of a full save)."""
    torch.manual_seed(0)
    model = timm.create_model("conv_cut_tiny", attention="keras_batch", num_classes=num_classes, det_norm=det_norm,
                              drop_rate=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.pre_classification.batch_normalization.running_var.uniform_(0.5, 1.5)
    sd = model.state_dict()
    native = NATIVE_ORDERS["conv_cut_rafdb" if num_classes == 7 else "conv_cut_ferplus"]
    weights = {**keras_trunk(sd), **keras_head(sd, native, model.label_names)}
    weights["optimizer_weights/Adam/iter:0"] = np.array(10, dtype=np.int64)
    weights[f"optimizer_weights/Adam/{P}_stem_conv/kernel/m:0"] = np.zeros((4, 4, 3, 16), dtype=np.float32)
    return model, weights


def test_keras_convnext_names_map_to_the_timm_trunk_names():
    assert trunk_key(f"a/b/{P}_stem_conv/kernel:0") == ("base_model.stem.0.weight", "conv")
    assert trunk_key(f"{P}_downsampling_layernorm_1/beta") == ("base_model.stages.2.downsample.0.bias", None)
    assert trunk_key(f"{P}_downsampling_conv_0/kernel:0") == ("base_model.stages.1.downsample.1.weight", "conv")
    assert trunk_key(f"{P}_stage_2_block_23_depthwise_conv/kernel:0") == (
        "base_model.stages.2.blocks.23.conv_dw.weight", "conv")
    assert trunk_key(f"{P}_stage_1_block_0_pointwise_conv_2/kernel:0") == (
        "base_model.stages.1.blocks.0.mlp.fc2.weight", "dense")
    assert trunk_key(f"{P}_stage_0_block_2_layer_scale/gamma:0") == ("base_model.stages.0.blocks.2.gamma", None)
    for dropped in (f"{P}_prestem_normalization/mean:0", f"{P}_stage_3_block_0_layernorm/gamma:0",
                    f"{P}_downsampling_conv_2/kernel:0", f"{P}_head_dense/kernel:0"):
        assert trunk_key(dropped) == (None, None), dropped
    assert trunk_key("pre_classification/dense/kernel:0") is None


@pytest.mark.parametrize("num_classes, det_norm", [(7, False), (8, True)])
def test_released_weights_convert_completely_and_reproduce_the_model(num_classes, det_norm):
    source, weights = released_like(num_classes, det_norm)
    dropped = []
    sd = keras_to_convcut(weights, dropped=dropped)
    assert any("prestem_normalization" in k for k in dropped) and any(k.startswith("optimizer_weights/")
                                                                      for k in dropped)
    kwargs = infer_model_kwargs(sd)
    assert kwargs == dict(num_classes=num_classes, attention="keras_batch", dims=(16, 32, 64), depths=(1, 1, 2),
                          cut="block23_norm", det_dim=32, hidden_dim=32, det_norm=det_norm)
    target = timm.create_model("conv_cut", drop_rate=0.0, **kwargs).eval()
    target.load_state_dict(sd, strict=False)  # num_batches_tracked is not a Keras weight
    assert set(target.state_dict()) - set(sd) == {"pre_classification.batch_normalization.num_batches_tracked"}
    x = torch.randn(3, 3, 96, 96)
    with pytest.warns(RuntimeWarning), torch.no_grad():  # keras_batch attends across the batch
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


def test_cli_converts_an_npz_dump_into_a_rebuildable_file(tmp_path, capsys):
    source, weights = released_like()
    src, dst = tmp_path / "convcut_weights.npz", tmp_path / "conv_cut.safetensors"
    np.savez(src, **weights)
    assert cli_main(["convert", "--from", "conv-cut-keras", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "conv-cut-keras:" in out and "prestem_normalization" in out and f"wrote {dst}" in out
    model, meta = load_model(dst)  # the file names its model and arguments
    assert meta["model"] == "conv_cut" and meta["model_kwargs"]["attention"] == "keras_batch"
    assert model.label_names == EXPRESSIONS[:7]
    x = torch.randn(2, 3, 96, 96)
    with pytest.warns(RuntimeWarning), torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)


def test_h5_files_read_like_keras_writes_them(tmp_path):
    h5py = pytest.importorskip("h5py")
    source, weights = released_like()
    path = tmp_path / "2_raf.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.10.0"
        for name, value in weights.items():
            f.create_dataset(name, data=value)
    read = read_keras_weights(path)
    assert set(read) == {k[len("model_weights/"):] for k in weights if k.startswith("model_weights/")}
    dst = tmp_path / "conv_cut.safetensors"
    assert cli_main(["convert", "--from", "conv-cut-keras", str(path), str(dst)]) == 0
    model, _ = load_model(dst)
    torch.testing.assert_close(model.state_dict()["base_model.stem.0.weight"], source.base_model.stem[0].weight)


def test_errors_name_the_weight_or_the_file(tmp_path, monkeypatch, capsys):
    _, weights = released_like()
    odd = dict(weights, **{"model_weights/random_flip/seed_generator/state:0": np.zeros(2, dtype=np.int64)})
    with pytest.raises(CheckpointError, match=r"conv-cut-keras: 1 weights are neither .*random_flip/seed_generator"):
        keras_to_convcut(odd)
    dropped = []
    keras_to_convcut(odd, strict=False, dropped=dropped)
    assert "model_weights/random_flip/seed_generator/state:0" in dropped
    head_only = {k: v for k, v in weights.items() if P not in k}
    with pytest.raises(CheckpointError, match="no Keras ConvNeXt trunk weights"):
        keras_to_convcut(head_only)
    gap = {k: v for k, v in weights.items() if "stage_1_block_0_depthwise_conv/kernel" not in k}
    src, dst = tmp_path / "gap.npz", tmp_path / "gap.safetensors"
    np.savez(src, **gap)
    assert cli_main(["convert", "--from", "conv-cut-keras", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "base_model.stages.1.blocks.0.conv_dw.weight" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match=r"missing\.h5.*no such file"):
        read_keras_weights(tmp_path / "missing.h5")
    (tmp_path / "model.h5").write_bytes(b"not hdf5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # h5py is optional: without it the error says what to do
    with pytest.raises(CheckpointError, match=r"model\.h5.*needs h5py .*\.npz dump"):
        read_keras_weights(tmp_path / "model.h5")


def keras_cut_weight_names():
    """The weight names of ``Model(ConvNeXtBase().input, layers[-57].output)`` (the released cut, through block
    23's LayerNorm), built from Keras' naming rule: depths (3, 3, 27, 3), each block depthwise_conv → layernorm
    → pointwise_conv_1 → pointwise_conv_2 → layer_scale, downsampling_{layernorm,conv}_{i} before stages 1-3."""
    names = [f"{P}_prestem_normalization/{w}" for w in ("mean", "variance", "count")]
    names += [f"{P}_stem_conv/kernel", f"{P}_stem_conv/bias", f"{P}_stem_layernorm/gamma", f"{P}_stem_layernorm/beta"]
    block = [("depthwise_conv", "kernel"), ("depthwise_conv", "bias"), ("layernorm", "gamma"), ("layernorm", "beta"),
             ("pointwise_conv_1", "kernel"), ("pointwise_conv_1", "bias"), ("pointwise_conv_2", "kernel"),
             ("pointwise_conv_2", "bias"), ("layer_scale", "Variable")]
    for stage, depth in enumerate((3, 3, 24)):
        if stage:
            i = stage - 1
            names += [f"{P}_downsampling_layernorm_{i}/gamma", f"{P}_downsampling_layernorm_{i}/beta",
                      f"{P}_downsampling_conv_{i}/kernel", f"{P}_downsampling_conv_{i}/bias"]
        for b in range(depth):
            parts = block[:4] if (stage, b) == (2, 23) else block  # the cut: block 23 up to its LayerNorm
            names += [f"{P}_stage_{stage}_block_{b}_{layer}/{w}" for layer, w in parts]
    return [f"base_model/{n}:0" for n in names]


def test_the_full_convnext_base_cut_maps_onto_every_trunk_tensor():
    with torch.device("meta"):
        model = timm.create_model("conv_cut", attention="keras_batch")
    trunk = {k for k in model.state_dict() if k.startswith("base_model.")}
    mapped = [trunk_key(n)[0] for n in keras_cut_weight_names()]
    kept = [k for k in mapped if k is not None]
    assert len(kept) == len(set(kept)) == len(trunk) == 4 + 8 + 29 * 9 + 4 and set(kept) == trunk  # stem, ds, blocks
    assert mapped.count(None) == 3  # the Keras input normalisation
