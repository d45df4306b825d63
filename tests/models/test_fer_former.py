"""FER-former (fastfer/models/fer_former.py) against docs/models/ferformer.md: the released forward (transcribed in
official_ferformer.py), contract, shapes, parameter counts, text features built once, heads, loss, backends,
training, compile."""
import copy

import pytest
import timm
import torch

import fastfer
import torch.nn.functional as F

import fastfer.models.fer_former  # noqa: F401  (registers fer_former, fer_former_tiny)
from fastfer.labels import EXPRESSIONS, NATIVE_ORDERS, order_map
from fastfer.models.convert.fer_former import load_official
from fastfer.models.fer_former import FerFormerLoss, patchify, symmetric_infonce
from fastfer.models.irse import IRSE
from fastfer.models.text_encoder import build_prompts, save_text_embed
from fastfer.ops.backends import registry as _backends
from tests.models.official_ferformer import (
    _rearrange_patches,
    official_forward,
    to_official,
)
from tests.ops.helpers import assert_rule

LABELS7 = EXPRESSIONS[:7]


class CountingEncoder:
    """A text encoder that returns fixed random rows and counts its calls."""

    def __init__(self, seed=0):
        self.calls = 0
        self.prompts = None
        self.seed = seed

    def encode(self, prompts):
        self.calls += 1
        self.prompts = list(prompts)
        return torch.randn(len(prompts), 512, generator=torch.Generator().manual_seed(self.seed))


pytestmark = pytest.mark.backend("torch")  # the reference; kernel tests pin theirs inside


def randomize_(model):
    """Random BatchNorm statistics and non-zero tokens / biases so every parameter matters in a comparison."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", ".bias")) or name in ("cls_token", "clip_token"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


def tiny(**kw):
    torch.manual_seed(0)
    return timm.create_model("fer_former_tiny", **kw)


def images(n, size=32, seed=1):
    """Random inputs; 32² by default: FER-former is size-agnostic (adaptive pooling to 12×12) and 3× cheaper."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.safetensors"
    save_text_embed(path, torch.randn(7, 512, generator=torch.Generator().manual_seed(5)), LABELS7,
                    encoder="random test rows")
    return path


# --- the released forward ------------------------------------------------------------------------------------

def test_torch_backend_reproduces_the_released_forward():
    """Official weights layout → converter → fastfer (torch backend) equals the transcribed released forward,
    label and similarity logits, rows permuted to the canonical order."""
    enc = CountingEncoder()
    model = randomize_(tiny(text_token="cls", text_encoder=enc)).eval()
    official = to_official(model.state_dict(), num_stages=2)
    fresh = tiny(text_token="cls").eval()
    dropped = load_official(fresh, official)
    assert {"token2.1.weight", "fc1.weight", "vit.pos_embed", "backbone.output_layer.0.weight",
            "backbone.body.7.res_layer.1.weight"} <= set(dropped)
    assert any(k.startswith("model.model.") for k in dropped) and not fresh.text_ready
    fresh.build_text_features(enc)
    x = images(2, size=56)
    with torch.no_grad():
        out = fresh.forward_outputs(x)
        to_canon = list(order_map(NATIVE_ORDERS["fer_former"], LABELS7))
        native_text = fresh.text_embed[to_canon]  # released prompt order
        ref_logits, ref_text = official_forward(official, x, native_text, num_stages=2, num_heads=2)
    canon_logits = torch.empty_like(ref_logits)
    canon_logits[:, to_canon] = ref_logits
    canon_text = torch.empty_like(ref_text)
    canon_text[:, to_canon] = ref_text
    torch.testing.assert_close(out.logits, canon_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.text_logits, canon_text, rtol=1e-4, atol=1e-4)


def test_patchify_matches_the_einops_layout():
    f = torch.randn(2, 5, 12, 12)
    for p in (2, 3, 4, 6, 12):
        assert torch.equal(patchify(f, p), _rearrange_patches(f, p))


# --- the paper-size model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return timm.create_model("fer_former").eval()


def test_shapes_at_every_stage(paper_model, text_file):
    model = paper_model
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, m in [("backbone", model.backbone), ("token_norm", model.token_norm),
                             ("block0", model.blocks[0]), ("blocks", model.blocks), ("head", model.head),
                             ("p2", model.patch_embed["p2"]), ("p12", model.patch_embed["p12"])]]
    model.build_text_features(text_file)
    try:
        with torch.no_grad():
            out = model.forward_outputs(torch.randn(1, 3, 112, 112))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == {"backbone": (1, 256, 14, 14), "p2": (1, 36, 256), "p12": (1, 1, 256),
                      "token_norm": (1, 50, 256), "block0": (1, 52, 256), "blocks": (1, 52, 256), "head": (1, 7)}
    assert out.text_logits.shape == (1, 7) and out.image_feature.shape == (1, 256)
    assert out.text_feature.shape == (7, 256)
    assert model.num_tokens == 50 and model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.head_dim == 64


def test_parameter_counts(paper_model):
    """Registered = forward path (dead weight not built); the released registered total adds the dead weight."""
    counts = paper_model.count_parameters()
    block = 256 * 768 + (256 * 256 + 256) + 2 * 512 + (256 * 1024 + 1024) + (1024 * 256 + 256)  # no qkv bias
    projections = sum(p * p * 256 * 256 + 256 for p in (2, 4, 6, 12))
    assert counts["blocks"] == 16 * block == 12_623_872
    assert counts["patch_embed"] == projections == 13_108_224
    assert counts["backbone"] == sum(p.numel() for p in IRSE(num_stages=3).parameters()) == 17_611_968
    text_head = 512 * 256 + 256  # text_proj exists once the text features do (another test builds them)
    assert counts["head"] == 256 * 7 + 7 and counts["text_proj"] == (text_head if paper_model.text_ready else 0)
    assert counts["token_norm"] == 100 and counts["tokens"] == 512 and counts["pos_embed"] == 0
    assert counts["total"] - counts["text_proj"] == 43_346_475  # what model(x) uses
    assert 43_346_475 + text_head == 43_477_803  # with the text head, docs/models/ferformer.md §12: ≈ 43.5 M
    stage4 = sum(p.numel() for p in IRSE(num_stages=4).body[3].parameters())
    output_layer = 2 * 512 + (512 * 7 * 7 * 512 + 512) + 2 * 512  # BN2d, Linear(25088 → 512), BN1d
    dead = stage4 + output_layer + (3 * 3 * 256 * 256 + 256) + (512 * 256 + 256) + 52 * 256  # + token2, fc1, pos
    assert abs(stage4 + output_layer - 25.96e6) < 0.01e6  # §12: stage 4 + output layer 25.96 M
    assert counts["total"] + dead == 70_175_531  # released registered total, §12: ≈ 70.2 M


# --- contract --------------------------------------------------------------------------------------------------

def test_registered_contract_and_pretrained_cfg(text_file):
    model = tiny(text_encoder=text_file).eval()
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == LABELS7 == model.label_names
    assert cfg["mean"] == (0.5751, 0.4491, 0.4006) and cfg["std"] == (0.2064, 0.1888, 0.1803)
    assert timm.create_model("fer_former").pretrained_cfg["input_size"] == (3, 112, 112)
    assert model.get_classifier() is model.head
    x = images(2, size=cfg["input_size"][-1])  # the registered input size, 56²
    feats = model.forward_features(x)
    assert feats.shape == (2, 52, model.num_features) == (2, 52, 64)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    torch.testing.assert_close(model(x), model.head(feats[:, 0]))
    model.reset_classifier(8)
    assert model(x).shape == (2, 8) and model.label_names == EXPRESSIONS and not model.text_ready
    assert model.text_embed is None and model.text_proj is not None  # features dropped, projection kept
    enc = CountingEncoder()
    model.build_text_features(enc)
    assert enc.prompts[-2:] == ["a face image of angry", "a face image of contempt"]
    assert model.forward_outputs(x).text_logits.shape == (2, 8)
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


def test_blocks_follow_the_released_vit():
    block = tiny().blocks[0]
    assert block.norm1.eps == 1e-5 and block.attn.qkv.bias is None and block.attn.proj.bias is not None
    assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none"
    assert block.attn.keep_count(52) is None  # plain attention: nothing pooled
    assert torch.count_nonzero(block.attn.proj.bias) == 0  # released init: ViT Linear biases zero


# --- text features ---------------------------------------------------------------------------------------------

def test_text_features_are_computed_once(text_file):
    enc = CountingEncoder()
    model = tiny(text_encoder=enc).train()
    assert enc.calls == 1 and enc.prompts == build_prompts(LABELS7)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = FerFormerLoss()
    for _ in range(3):
        loss = loss_fn(model.forward_outputs(images(4)), torch.tensor([0, 1, 2, 3])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.head_fusion = "fused"
    model(images(2))
    assert enc.calls == 1
    assert model.text_embed.grad is None and "text_embed" in model.state_dict()
    restored = tiny()  # no encoder: the buffer comes with the state_dict
    assert not restored.text_ready
    restored.load_state_dict(model.state_dict())
    assert restored.text_ready and enc.calls == 1
    torch.testing.assert_close(restored.text_features(), model.text_features())


def test_without_text_features_the_error_says_what_to_pass():
    model = tiny(head_fusion="text").eval()
    with pytest.raises(RuntimeError, match=r"text_encoder=<tensor file .* text_encoder='open_clip:<local CLIP"):
        model(images(1))
    assert tiny().eval()(images(1)).shape == (1, 7)  # the label head needs no text features
    with pytest.raises(ValueError, match="encoder: expected a text encoder, got None"):
        tiny().build_text_features(None)
    custom = tiny(num_classes=3)
    with pytest.raises(ValueError, match="label_names: the text head needs class names"):
        custom.build_text_features(CountingEncoder())


def test_text_file_for_other_labels_is_refused(tmp_path):
    path = tmp_path / "raf_order.safetensors"
    save_text_embed(path, torch.randn(7, 512), NATIVE_ORDERS["fer_former"])
    with pytest.raises(ValueError, match="label_names .* do not match the model's"):
        tiny(text_encoder=path)


# --- heads -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text_token, index", [("clip", 1), ("cls", 0)])
def test_text_token_switch_picks_the_token(text_token, index, text_file):
    model = tiny(text_token=text_token, text_encoder=text_file).eval()
    x = images(2)
    feats = model.forward_features(x)
    out = model.forward_outputs(x)
    torch.testing.assert_close(out.image_feature, F.normalize(feats[:, index], dim=-1))
    torch.testing.assert_close(out.text_logits, 100 * out.image_feature @ out.text_feature.t())
    torch.testing.assert_close(out.text_feature.norm(dim=-1), torch.ones(7))


def test_zero_tokens_without_pos_embed_match_at_init_and_options_change_that():
    feats = tiny().eval().forward_features(images(2))
    torch.testing.assert_close(feats[:, 0], feats[:, 1])  # D2: identical at step 0, as released
    other = tiny(token_init="trunc_normal").eval().forward_features(images(2))
    assert (other[:, 0] - other[:, 1]).abs().max() > 1e-3
    with_pos = tiny(use_pos_embed=True)
    assert with_pos.pos_embed.shape == (1, 52, 64) and with_pos.count_parameters()["pos_embed"] == 52 * 64


def test_head_fusion_modes(text_file):
    model = tiny(text_encoder=text_file).eval()
    x = images(3)
    out = model.forward_outputs(x)
    model.head_fusion = "text"
    torch.testing.assert_close(model(x), out.text_logits)
    model.head_fusion = "fused"
    fused = model(x).softmax(-1)
    torch.testing.assert_close(fused, 0.5 * (out.logits.softmax(-1) + out.text_logits.softmax(-1)))


# --- loss ------------------------------------------------------------------------------------------------------

def test_loss_weights_and_infonce():
    torch.manual_seed(0)
    logits, text_logits = torch.randn(4, 7), torch.randn(4, 7)
    image, text = F.normalize(torch.randn(4, 16), dim=-1), F.normalize(torch.randn(7, 16), dim=-1)
    from fastfer.models.fer_former import FerFormerOutput

    out = FerFormerOutput(logits, text_logits, image, text)
    y = torch.tensor([0, 3, 3, 6])
    parts = FerFormerLoss(cls_weight=0.5, text_weight=2.0)(out, y)
    torch.testing.assert_close(parts.cls_loss, F.cross_entropy(logits, y))
    torch.testing.assert_close(parts.text_loss, F.cross_entropy(text_logits, y))
    torch.testing.assert_close(parts.loss, 0.5 * parts.cls_loss + 2.0 * parts.text_loss)
    distinct = torch.tensor([0, 1, 2, 3])  # all labels differ: CLIP's symmetric InfoNCE with identity targets
    sim = 100 * image @ text[distinct].t()
    clip = 0.5 * (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.t(), torch.arange(4)))
    torch.testing.assert_close(symmetric_infonce(image, text[distinct], distinct), clip)
    info = FerFormerLoss(text_loss="infonce")(out, y)
    assert torch.isfinite(info.loss) and info.text_loss > 0
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        FerFormerLoss()(out, torch.tensor([0, 1]))


@pytest.mark.parametrize("text_loss", ["ce", "infonce"])
def test_training_steps_lower_the_loss(text_loss, text_file):
    model = tiny(text_encoder=text_file).train()
    x, y = images(4, seed=4), torch.tensor([0, 3, 5, 6])
    loss_fn = FerFormerLoss(text_loss=text_loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # D5's documented alternative (faster from scratch)
    losses = []
    for _ in range(5):
        loss = loss_fn(model.forward_outputs(x), y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# --- backends, compile, errors ------------------------------------------------------------------------------

def _triton_reason():
    call = _backends.Call("token_pool_attention", torch.device("cpu"), torch.float32, head_dim=32)
    return "; ".join(_backends.get("triton").not_supported_reasons(call))


@pytest.mark.skipif(bool(_triton_reason()), reason=_triton_reason() or "")
def test_fused_backend_matches_torch_backend(text_file):
    model = randomize_(tiny(text_encoder=text_file)).eval()
    x = images(2)
    def stack(m, t):  # the transformer part, where the fused attention runs
        return m.blocks(torch.cat([m.cls_token.expand(2, -1, -1), m.clip_token.expand(2, -1, -1), t], 1))

    with torch.no_grad():
        tokens = model.forward_tokens(x)
        low = stack(model, tokens)
        with fastfer.use_backend("triton"):
            fused = stack(model, tokens)
        ref64 = stack(model.double(), tokens.double())
    assert_rule(fused, ref64, low, "fer_former_tiny blocks output, triton vs fp64")


@pytest.mark.skipif(bool(_triton_reason()), reason=_triton_reason() or "")
def test_fused_backend_matches_torch_in_a_paper_block(paper_model):
    """One paper-size block (52 tokens, 4 heads of 64): the shape FER-former runs the fused op at."""
    block = copy.deepcopy(paper_model.blocks[0]).eval()
    x = torch.randn(2, 52, 256, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        low = block(x)
        with fastfer.use_backend("triton"):
            fused = block(x)
        ref64 = block.double()(x.double())
    assert_rule(fused, ref64, low, "paper block, triton vs fp64")


def test_compile_fullgraph_forward_backward_matches_eager(text_file):
    model = tiny(text_encoder=text_file).train()
    x = images(2)
    eager = model.forward_outputs(x)
    (eager.logits.sum() + eager.text_logits.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)
    compiled = torch.compile(model.forward_outputs, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (out.logits.sum() + out.text_logits.sum()).backward()
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.text_logits, eager.text_logits, rtol=1e-4, atol=1e-3)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-4, msg=n)


@pytest.mark.parametrize("kwargs, message", [
    (dict(text_token="patch"), "text_token: expected one of"),
    (dict(head_fusion="max"), "head_fusion: expected one of"),
    (dict(token_init="ones"), "token_init: expected one of"),
    (dict(patch_sizes=(2, 5)), r"patch_sizes: expected divisors of pool_size=12, got \(2, 5\)"),
    (dict(text_dim=768), "text_dim: expected 512"),
    (dict(num_classes=7, label_names=("a",)), "label_names: expected 7 names"),
    (dict(in_chans=1), "in_chans: expected 3"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


# --- the text head exists with its features; state_dicts load both ways ------------------------------------------

def test_text_head_exists_only_with_text_features(text_file):
    plain = tiny()
    assert plain.text_proj is None and plain.text_embed is None and not plain.text_ready
    assert not any(k.startswith(("text_proj.", "text_embed")) for k in plain.state_dict())
    with_text = tiny(text_encoder=text_file)
    assert with_text.text_ready and with_text.text_proj.weight.shape == (64, 512)
    assert with_text.count_parameters()["text_proj"] == 512 * 64 + 64 and plain.count_parameters()["text_proj"] == 0


def test_state_dicts_load_both_ways(text_file):
    trained = tiny(text_encoder=text_file).eval()
    with torch.no_grad():
        trained.text_proj.bias.uniform_(-1, 1)
    x = images(2)
    # a model without a text head adopts one from the state_dict (text_proj and text_embed)
    fresh = tiny().eval()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.text_ready
    torch.testing.assert_close(fresh.forward_outputs(x).text_logits, trained.forward_outputs(x).text_logits)
    # a state_dict without one (label head only) leaves the model's own text head as it is
    label_only = {k: v for k, v in tiny().state_dict().items()}
    own = trained.text_features().clone()
    result = trained.load_state_dict(label_only)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(trained.text_features(), own)
    # an older fastfer file marked "no text features" with NaN rows: it loads as a model without them
    old = dict(label_only, text_embed=torch.full((7, 512), float("nan")),
               **{"text_proj.weight": torch.randn(64, 512), "text_proj.bias": torch.zeros(64)})
    legacy = tiny()
    legacy.load_state_dict(old)
    assert legacy.text_embed is None and not legacy.text_ready and legacy.text_proj is not None
    torch.testing.assert_close(legacy.text_proj.weight, old["text_proj.weight"])
    with pytest.raises(RuntimeError, match="no text features yet"):
        legacy.forward_outputs(x)


def test_timm_pretrained_file_with_a_text_head_loads(tmp_path, text_file):
    from safetensors.torch import save_file

    trained = tiny(text_encoder=text_file).eval()
    path = tmp_path / "fer_former_tiny.safetensors"
    save_file(trained.state_dict(), str(path))
    loaded = timm.create_model("fer_former_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert loaded.text_ready
    torch.testing.assert_close(loaded.text_features(), trained.text_features())


def test_unpooled_mode_and_nchw_intermediates():
    model = tiny(num_classes=0, global_pool="").eval()
    x = images(1, size=56)
    tokens = model(x)
    assert tokens.shape == (1, 52, 64)
    with pytest.raises(ValueError, match="global_pool='': .* expected head_fusion='cls', got 'fused'"):
        tiny(head_fusion="fused", global_pool="")
    with pytest.raises(ValueError, match="global_pool: expected one of"):
        tiny().reset_classifier(0, "avg")
    _, (grid,) = model.forward_intermediates(x, indices=1)
    assert grid.shape == (1, 64, 6, 6)  # the 36 finest (p = 2) tokens on their 6×6 grid, raster order
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, 2:38])
    assert model.feature_info[0]["reduction"] == pytest.approx(56 / 6)


def test_load_model_rebuilds_a_trained_file_with_its_text_head(tmp_path, text_file):
    from fastfer.models.weights import load_model, save_weights

    trained = tiny(text_encoder=text_file).eval()
    path = save_weights(tmp_path / "model.safetensors", trained.state_dict(),
                        metadata=dict(model="fer_former_tiny", model_kwargs={}, num_classes=7))
    model, _ = load_model(path)  # the metadata carries no text encoder: the text head comes with the weights
    assert model.text_ready
    x = images(2)
    torch.testing.assert_close(model.forward_outputs(x).text_logits, trained.forward_outputs(x).text_logits)
