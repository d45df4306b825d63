"""Conv-cut (fastfer/models/conv_cut.py) against docs/models/convcut.md: contract, shapes, parameter counts, the trunk cut
equal to timm's convnext_base, batch independence of the default head, backends, training, compile."""
import warnings

import pytest
import timm
import torch

import fastfer
import torch.nn.functional as F

import fastfer.models.conv_cut  # noqa: F401  (registers conv_cut, conv_cut_tiny)
from fastfer.labels import EXPRESSIONS
from fastfer.models.conv_cut import ConvCut, TokenAttentionPool
from fastfer.models.convert.conv_cut import load_convnext_trunk
from fastfer.ops.backends import registry as _backends
from tests.ops.helpers import assert_rule


pytestmark = pytest.mark.backend("torch")  # the reference; kernel tests pin theirs inside


def tiny(**kw) -> ConvCut:
    torch.manual_seed(0)
    return timm.create_model("conv_cut_tiny", drop_rate=0.0, **kw)


def images(n, size=224, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the full-size model: one build, one forward (ConvNeXt-B is 88 M parameters) ------------------------------

def random_convnext_base():
    """timm convnext_base, pretrained=False, with random weights drawn directly (timm's trunc-normal init of 88 M
    parameters takes seconds; the values only need to be random, with LayerNorm scales near 1)."""
    with torch.device("meta"):
        ref = timm.create_model("convnext_base", pretrained=False)
    ref = ref.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.normal_(0.0, 0.02 if p.dim() > 1 else 0.1, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return ref


@pytest.fixture(scope="module")
def full_run():
    """timm convnext_base (random init) loaded into conv_cut; one 224² image through both, with stage shapes."""
    ref = random_convnext_base()
    model = timm.create_model("conv_cut").eval()
    dropped = load_convnext_trunk(model, ref.state_dict())
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, m in [("stem", model.base_model.stem), ("stage0", model.base_model.stages[0]),
                             ("stage1", model.base_model.stages[1]), ("trunk", model.base_model),
                             ("det1", model.patch_extraction.conv1), ("det2", model.patch_extraction.conv2),
                             ("attention", model.attention), ("pre_classification", model.pre_classification)]]
    x = images(1)
    with torch.no_grad():
        trunk = model.forward_trunk(x)
        logits = model.forward_head(model.patch_extraction(trunk))  # the rest of model(x), trunk not rerun
        y = ref.stages[2].downsample(ref.stages[1](ref.stages[0](ref.stem(x))))
        for i in range(23):
            y = ref.stages[2].blocks[i](y)
        block = ref.stages[2].blocks[23]
        y = block.norm(block.conv_dw(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    for h in hooks:
        h.remove()
    return dict(model=model, trunk=trunk, ref=y, logits=logits, shapes=shapes, dropped=dropped)


def test_trunk_equals_timm_convnext_base_up_to_block23_norm(full_run):
    assert full_run["trunk"].shape == (1, 512, 14, 14)
    torch.testing.assert_close(full_run["trunk"], full_run["ref"], rtol=0, atol=1e-6)
    dropped = full_run["dropped"]
    assert "stages.2.blocks.23.mlp.fc1.weight" in dropped and "stages.2.blocks.23.gamma" in dropped
    assert "stages.2.blocks.24.conv_dw.weight" in dropped and "stages.3.downsample.1.weight" in dropped
    assert not any(k.startswith(("stem.", "stages.0.", "stages.1.")) for k in dropped)


def test_shapes_at_every_stage(full_run):
    assert full_run["shapes"] == {
        "stem": (1, 128, 56, 56), "stage0": (1, 128, 56, 56), "stage1": (1, 256, 28, 28),
        "trunk": (1, 512, 14, 14), "det1": (1, 256, 4, 4), "det2": (1, 256, 2, 2), "attention": (1, 256),
        "pre_classification": (1, 32)}
    assert full_run["logits"].shape == (1, 7)


def test_parameter_counts_match_the_keras_model(full_run):
    counts = full_run["model"].count_parameters()
    assert counts["trunk"] == 51_640_448  # Keras layers[-57] cut of ConvNeXtBase
    assert counts["det"] == 206_336
    assert counts["attention"] == 3 * 65_792  # Q, K, V Linear(256, 256) with bias
    assert counts["trainable"] == counts["total"]  # the trunk trains by default; freezing is the recipe's choice
    assert counts["total"] - counts["trunk"] == 412_231  # docs/models/convcut.md §4.2: trainable with a frozen trunk, 7 classes
    keras = timm.create_model("conv_cut", attention="keras_batch", trunk="frozen").count_parameters()
    assert keras["trainable"] == 214_856 and keras["attention"] == 1
    assert keras["total"] + 2 * 32 == 51_855_368  # + BatchNorm moving mean/variance (Keras counts them)


def test_registered_contract_and_pretrained_cfg():
    model = tiny()
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == EXPRESSIONS[:7] == model.label_names
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["classifier"] == "classification_head" and model.get_classifier() is model.classification_head
    assert timm.create_model("conv_cut", pretrained=False).pretrained_cfg["input_size"] == (3, 224, 224)
    x = images(2)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) == (2, 32, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size) == (2, 32)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    model.reset_classifier(8)
    assert model(x).shape == (2, 8) and model.label_names == EXPRESSIONS and model.num_classes == 8
    model.reset_classifier(0)
    assert model(x).shape == (2, 32) and model.label_names is None
    eight = tiny(num_classes=8)
    assert eight.pretrained_cfg["label_names"] == EXPRESSIONS and eight.pretrained_cfg["num_classes"] == 8


def test_det_same_padding_is_symmetric_one_at_14():
    model = tiny().eval()
    z = torch.randn(2, 64, 14, 14)
    dw = model.patch_extraction.conv1.depthwise
    torch.testing.assert_close(dw(z), F.conv2d(z, dw.weight, stride=4, padding=1, groups=64))


def test_trunk_options_freeze_what_they_say():
    assert all(p.requires_grad for p in tiny().parameters())  # default trunk="all": a plain timm model
    model = tiny(trunk="frozen")
    assert model.count_parameters()["trainable"] == sum(p.numel() for n, p in model.named_parameters()
                                                        if not n.startswith("base_model."))
    model.train()
    assert not model.base_model.training and model.pre_classification.training  # frozen trunk stays in eval
    assert not any(p.requires_grad for p in model.base_model.parameters())
    model(images(2)).sum().backward()
    assert all(p.grad is None for p in model.base_model.parameters())
    assert model.classification_head.weight.grad is not None and model.attention.qkv.weight.grad is not None

    partial = tiny(trunk="last_n", trunk_trainable_blocks=2).train()
    blocks = partial.base_model.blocks()
    trainable = {n for n, p in partial.base_model.named_parameters() if p.requires_grad}
    expected = {n for n, p in partial.base_model.named_parameters()
                if any(p is q for b in blocks[-2:] for q in b.parameters())}
    assert trainable == expected and len(expected) > 0 and partial.base_model.training
    assert blocks[-1].__class__.__name__ == "PartialConvNeXtBlock"
    norms_frozen = tiny(trunk="all", freeze_trunk_norms=True)
    assert not norms_frozen.base_model.stages[0].blocks[0].norm.weight.requires_grad
    assert norms_frozen.base_model.stages[0].blocks[0].conv_dw.weight.requires_grad


def test_block_boundary_cut_keeps_whole_blocks():
    model = tiny(cut="block22").eval()
    assert model.base_model.stages[2].blocks[-1].__class__.__name__ == "ConvNeXtBlock"
    assert model(images(1)).shape == (1, 7)


def test_per_sample_attention_is_batch_independent():
    model = tiny().eval()
    batch = images(5)
    alone = model(batch[2:3])
    perm = torch.tensor([4, 2, 0, 3, 1])
    together = model(batch[perm])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)


def test_keras_batch_attention_depends_on_the_batch_and_warns():
    model = tiny(attention="keras_batch").eval()
    with torch.no_grad():
        model.attention.scale.fill_(5.0)
    batch = images(5)
    with pytest.warns(RuntimeWarning, match="depend on the other images"):
        alone = model(batch[2:3])
        together = model(batch)
    assert (together[2:3] - alone).abs().max() > 1e-3  # same image, other logits
    h = torch.randn(1, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(model.attention(h), h)  # identity at batch 1


def _triton_reason():
    call = _backends.Call("token_pool_attention", torch.device("cpu"), torch.float32, head_dim=32)
    return "; ".join(_backends.get("triton").not_supported_reasons(call))


@pytest.mark.skipif(bool(_triton_reason()), reason=_triton_reason() or "")
def test_fused_backend_matches_torch_backend():
    model = tiny().eval()
    x = images(2)
    with torch.no_grad():
        feats = model.forward_features(x)
        with fastfer.use_backend("triton"):
            fused = model.forward_head(feats)
        low = model.forward_head(feats)
        ref64 = model.double().forward_head(feats.double())
    assert_rule(fused, ref64, low, "conv_cut_tiny logits, triton vs fp64")


@pytest.mark.skipif(bool(_triton_reason()), reason=_triton_reason() or "")
def test_token_attention_at_the_paper_width_256_fused_matches_torch():
    """The paper head: 4 DET tokens of width 256 = one head of dim 256, the fused kernel's maximum."""
    torch.manual_seed(2)
    pool = TokenAttentionPool(256)
    pool.reset_parameters()
    tokens = torch.randn(3, 4, 256)
    with torch.no_grad():
        low = pool(tokens)
        with fastfer.use_backend("triton"):
            fused = pool(tokens)
        ref64 = pool.double()(tokens.double())
        pool.float()
        q, k, v = pool.qkv(tokens).chunk(3, dim=-1)  # the formula of docs/models/convcut.md §4.2, written out
        formula = (torch.softmax(q @ k.transpose(1, 2) / 16.0, dim=-1) @ v).mean(dim=1)
    assert_rule(fused, ref64, low, "token attention D=256, triton vs fp64")
    torch.testing.assert_close(low, formula, rtol=1e-5, atol=1e-5)


def test_training_steps_lower_the_loss():
    model = tiny().train()
    x, y = images(8, seed=3), torch.arange(8) % 7
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3, eps=1e-7)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 3.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_compile_fullgraph_forward_backward_matches_eager():
    model = tiny().train()
    x = images(2)
    eager = model(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(attention="batch"), "attention: expected one of"),
    (dict(trunk="some"), "trunk: expected one of"),
    (dict(cut="block9"), "cut: expected one of"),
    (dict(trunk="last_n", trunk_trainable_blocks=99), "trunk_trainable_blocks: expected 1..4"),
    (dict(det_dim=512), "det_dim: expected ≤ 256"),
    (dict(num_classes=3, label_names=("a", "b")), "label_names: expected 3 names"),
    (dict(in_chans=1), "in_chans: expected 3"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_bad_input_names_x():
    with pytest.raises(ValueError, match=r"x: expected a \(B, 3, H, W\) image batch, got shape \(3, 224, 224\)"):
        tiny()(torch.randn(3, 224, 224))


def test_unpooled_mode_and_feature_levels():
    model = tiny(num_classes=0, global_pool="").eval()
    x = images(1, size=96)
    det = model(x)
    torch.testing.assert_close(det, model.forward_features(x))  # the DET map, no head
    assert det.shape == (1, 32, 1, 1)
    with pytest.raises(ValueError, match="global_pool='': the unpooled DET map has no classifier; expected "
                                         "num_classes=0, got 7"):
        tiny(global_pool="")
    with pytest.raises(ValueError, match=r"global_pool: expected one of \('attn', ''\), got 'avg'"):
        tiny().reset_classifier(0, "avg")
    assert tiny(attention="keras_batch").global_pool == "avg"
    assert [(f["module"], f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        ("base_model.stages.0", 16, 4), ("base_model.stages.1", 32, 8), ("base_model.stages.2", 64, 16),
        ("patch_extraction.conv1", 32, 64), ("patch_extraction.conv2", 32, 128)]
    maps = model.forward_intermediates(images(1), intermediates_only=True)  # 224²
    assert [tuple(m.shape[-2:]) for m in maps] == [(56, 56), (28, 28), (14, 14), (4, 4), (2, 2)]
    torch.testing.assert_close(maps[2], model.forward_trunk(images(1)))
    normed = tiny(det_norm=True).eval()
    final, (last,) = normed.forward_intermediates(images(1), indices=1, norm=True)
    torch.testing.assert_close(last, final)  # norm=True: the DET LayerNorm on the DET level, as forward_features
