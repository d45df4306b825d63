"""fastfer.patch / unpatch on timm ViT-S and DeiT-S (random weights, 64×64 inputs → 17 tokens).

Pooling off: same logits and gradients as the unpatched model (tolerance rule against an fp64 copy) in
train and eval mode, fp32 and fp16. Pooling on: token counts and logits of an independent EViT-style
implementation (tests/nn/oracle.py). Plus exact restoration, shared parameters, state_dict round trips,
torch.compile, and every refusal.
"""
import copy

import pytest
import timm
import torch

import fastfer
from timm.models.vision_transformer import ResPostBlock
from torch import nn

from fastfer.nn import FusedViTBlock, PoolingBlock
from fastfer.nn import patch, patch_report, unpatch
from tests.nn import oracle
from tests.ops.helpers import assert_rule, backends_for

MODELS = ["vit_small_patch16_224", "deit_small_patch16_224"]
RATES = {3: 0.7, 6: 0.7, 9: 0.7}  # EViT's DeiT-S schedule (drop_loc 3, 6, 9)


pytestmark = pytest.mark.backend("torch")  # tests naming a kernel backend pin it inside


def _model(name, seed=0, **kwargs):
    """A ViT at 64×64 (17 tokens) with sharper attention than timm's init, so CLS scores have clear margins."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, img_size=64, num_classes=10, **kwargs)
    for block in model.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=0.08)
    return model


def _images(batch=2, seed=1):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _run(model, images, dtype, seed=5):
    """Logits and parameter gradients (by name) of a fixed random projection of the logits."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout / drop-path draws in every run
    logits = model(images.to(dtype))
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (logits * weights.to(dtype)).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_math(patched, ref64, lowprec, what):
    (out, grads), (ref, ref_grads), (low, low_grads) = patched, ref64, lowprec
    assert_rule(out, ref, low, f"{what}: logits")
    assert grads.keys() == ref_grads.keys(), f"{what}: gradients reach different parameters"
    for name in grads:
        assert_rule(grads[name], ref_grads[name], low_grads[name], f"{what}: grad {name}")


_REF64 = {}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", MODELS)
def test_fused_attention_matches_unpatched(name, dtype, train):
    """First 6 blocks of ViT-S / DeiT-S (CPU time); train mode with dropout and drop path (same seed)."""
    drops = dict(drop_path_rate=0.1, proj_drop_rate=0.1) if train else {}
    model = _model(name, depth=6, **drops).train(train)
    images = _images()
    if (name, train) not in _REF64:  # the fp64 reference serves both dtypes
        _REF64[name, train] = _run(copy.deepcopy(model).double(), images, torch.float64)
    ref64 = _REF64[name, train]
    model = model.to(dtype)
    lowprec = _run(model, images, dtype)
    report = patch(model)
    assert len(report.replaced) == 6 and all(isinstance(b, FusedViTBlock) for b in model.blocks)
    _assert_same_math(_run(model, images, dtype), ref64, lowprec, f"{name} {dtype} {'train' if train else 'eval'}")


# "auto": automatic choice (on CPU the ATen composition for plain attention; for pooling the cpu kernel when
# built, else the composition); "aten": automatic choice with the ATen composition for every layer.
KERNEL_BACKENDS = ["triton", "cpu", "auto", "aten"]


def _skip_unless_available(backend, dtype):
    if backend in ("auto", "aten"):
        return
    if backend not in backends_for("token_pool_attention", torch.device("cpu"), dtype, head_dim=64):
        pytest.skip(f"backend {backend!r} cannot run {dtype} on this machine (see fastfer.backends())")


def _pin(backend, monkeypatch):
    """The context a test runs the patched model in: the backend pinned, or automatic choice."""
    if backend in ("auto", "aten"):
        monkeypatch.delenv("FASTFER_BACKEND", raising=False)
    if backend == "aten":
        from fastfer.ops import token_pool

        monkeypatch.setattr(token_pool, "_COMPOSED_REPLACES", {None: ("torch", "cpu"), "pool": ("torch", "cpu")})
    return fastfer.use_backend(None if backend in ("auto", "aten") else backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_attention_kernel_backends(backend, dtype, monkeypatch):
    """The kernels (Triton through the interpreter on CPU, so 2 blocks; the C++ cpu backend when built) in the
    patched model, forward and backward."""
    _skip_unless_available(backend, dtype)
    model = _model("vit_small_patch16_224", depth=2).eval()
    images = _images()
    ref64 = _run(copy.deepcopy(model).double(), images, torch.float64)
    model = model.to(dtype)
    lowprec = _run(model, images, dtype)
    patch(model)
    with _pin(backend, monkeypatch):
        _assert_same_math(_run(model, images, dtype), ref64, lowprec, f"{backend} {dtype}")


def _token_counts(model, images):
    counts = []
    hooks = [b.register_forward_hook(lambda m, i, o: counts.append(o.shape[1])) for b in model.blocks]
    logits = model(images)
    for h in hooks:
        h.remove()
    return logits, counts


@pytest.mark.parametrize("score, rule", [("prob_mean", "evit"), ("logit_sum", "apvit")])
@pytest.mark.parametrize("name", MODELS)
def test_pooling_matches_evit_style_reference(name, score, rule):
    model = _model(name).eval()
    images = _images(batch=3)
    ref, ref_counts = oracle.evit_vit_forward(copy.deepcopy(model).double(), images.double(), RATES, score, rule)
    low, _ = oracle.evit_vit_forward(model, images, RATES, score, rule)
    report = patch(model, keep_rates=RATES, score=score, keep_rule=rule)
    with torch.no_grad():
        logits, counts = _token_counts(model, images)
    # evit: ceil(.7·16)=12, ceil(.7·12)=9, ceil(.7·9)=7; apvit: int(11.2)=11, int(7.7)=7, int(4.9)=4
    expected = [17] * 3 + [13] * 3 + [10] * 3 + [8] * 3 if rule == "evit" else [17] * 3 + [12] * 3 + [8] * 3 + [5] * 3
    assert counts == ref_counts == report.token_counts(17) == expected
    assert_rule(logits, ref, low, f"{name} pooled logits")
    assert report.pooling == RATES


@pytest.mark.parametrize("backend", ["torch", "aten"])
def test_pooling_gradients_match_evit_style_reference(backend, monkeypatch):
    model = _model("deit_small_patch16_224").eval()
    images = _images()

    def grads(m, dtype, forward):
        m.zero_grad(set_to_none=True)
        forward(m, images.to(dtype)).sum().backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    evit = lambda m, x: oracle.evit_vit_forward(m, x, RATES)[0]  # noqa: E731
    ref = grads(copy.deepcopy(model).double(), torch.float64, evit)
    low = grads(model, torch.float32, evit)
    patch(model, keep_rates=RATES)
    with _pin(backend, monkeypatch):
        out = grads(model, torch.float32, lambda m, x: m(x))
    assert out.keys() == ref.keys()
    for n in out:
        assert_rule(out[n], ref[n], low[n], f"pooled grad {n}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_pooling_kernel_backends_match_evit_style_reference(backend, monkeypatch):
    _skip_unless_available(backend, torch.float32)
    model = _model("deit_small_patch16_224", depth=3).eval()
    images = _images()
    rates = {0: 0.5, 1: 0.7}
    with torch.no_grad():
        ref, ref_counts = oracle.evit_vit_forward(copy.deepcopy(model).double(), images.double(), rates)
        low, _ = oracle.evit_vit_forward(model, images, rates)
        patch(model, keep_rates=rates)
        with _pin(backend, monkeypatch):
            logits, counts = _token_counts(model, images)
    assert counts == ref_counts == [9, 7, 7]
    assert_rule(logits, ref, low, f"{backend} pooled logits")


def test_unpatch_restores_modules_and_outputs_exactly():
    model = _model("vit_small_patch16_224").eval()
    images = _images()
    originals = list(model.blocks)
    params = {n: p for n, p in model.named_parameters()}
    before = model(images)
    report = patch(model, keep_rates=RATES)
    assert patch_report(model) is report
    assert {n: p for n, p in model.named_parameters()} == params  # the very same Parameter objects
    model.train()
    assert unpatch(model) is report and patch_report(model) is None
    assert all(a is b for a, b in zip(model.blocks, originals))
    assert all(m.training for m in model.modules())  # restored modules follow the mode set while patched
    model.eval()
    assert torch.equal(model(images), before)


@pytest.mark.parametrize("keep_rates", [None, {1: 0.5}])
def test_state_dict_round_trips(keep_rates):
    images = _images()
    plain = _model("deit_small_patch16_224", seed=0, depth=3).eval()
    other = _model("deit_small_patch16_224", seed=7, depth=3).eval()
    saved = copy.deepcopy(plain.state_dict())
    patched = _model("deit_small_patch16_224", seed=3, depth=3).eval()
    patch(patched, keep_rates=keep_rates)
    assert list(patched.state_dict()) == list(saved)
    patched.load_state_dict(saved)  # saved before patching → loads after (strict)
    unpatch(patched)
    assert torch.equal(patched(images), plain(images))
    patch(patched, keep_rates=keep_rates)
    other.load_state_dict(patched.state_dict())  # saved while patched → loads into an unpatched model
    assert torch.equal(other(images), plain(images))


def test_distilled_deit_attention_only():
    model = _model("deit_small_distilled_patch16_224").eval()
    images = _images()
    ref = copy.deepcopy(model).double()(images.double())
    low = model(images)
    with pytest.raises(ValueError, match=r"VisionTransformerDistilled has num_prefix_tokens=2"):
        patch(model, keep_rates=RATES)
    assert patch_report(model) is None and not any(isinstance(b, FusedViTBlock) for b in model.blocks)
    patch(model)
    assert_rule(model(images), ref, low, "distilled DeiT logits")


def test_attention_false_fuses_only_pooling_layers():
    model = _model("vit_small_patch16_224").eval()
    report = patch(model, attention=False, keep_rates=[None, 0.5] + [None] * 10)
    assert [type(b).__name__ for b in model.blocks[:3]] == ["Block", "FusedViTBlock", "Block"]
    assert [layer.action for layer in report.layers[:3]] == ["unchanged", "fused", "unchanged"]
    assert report.token_counts(17)[1:3] == [9, 9]
    assert "keep_rate=0.5 (evit)" in str(report)


class TinyFastferViT(nn.Module):
    """A user model built from fastfer.nn blocks (already fused)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[PoolingBlock(32, 2, keep_rate=r) for r in (None, 0.5, None)])

    def forward(self, x):
        return self.blocks(x)


def test_fastfer_blocks_are_left_in_place_and_retuned():
    model = TinyFastferViT()
    x = torch.randn(2, 9, 32)
    assert model(x).shape == (2, 5, 32)
    report = patch(model)
    assert [layer.action for layer in report.layers] == ["already fused"] * 3
    unpatch(model)
    report = patch(model, keep_rates={0: 0.5, 1: 1.0})
    assert [layer.action for layer in report.layers] == ["retuned", "retuned", "already fused"]
    assert model(x).shape == (2, 5, 32) and report.token_counts(9) == [5, 5, 5]
    unpatch(model)
    assert model.blocks[0].attn.keep_rate is None and model.blocks[1].attn.keep_rate == 0.5
    assert model.blocks[1].attn.score == "logit_sum" and model.blocks[1].attn.keep_rule == "apvit"


def test_deepcopy_of_patched_model_unpatches_independently():
    model = _model("vit_small_patch16_224", depth=2)
    patch(model)
    twin = copy.deepcopy(model)
    unpatch(twin)
    assert type(twin.blocks[0]).__name__ == "Block" and isinstance(model.blocks[0], FusedViTBlock)
    assert twin.blocks[0].attn.qkv.weight is not model.blocks[0].attn.qkv.weight


def test_torch_compile_of_patched_model():
    """Dynamo traces the patched blocks in one graph (fullgraph) through the ops' fake kernels and autograd.

    aot_eager rather than inductor: the same tracing, without ~30-50 s of C++ code generation on this CPU."""
    model = _model("deit_small_patch16_224", depth=3).eval()
    patch(model, keep_rates={1: 0.5})
    images = _images()
    eager = model(images)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(images)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert model.blocks[2].attn.qkv.weight.grad is not None


# --- refusals: clear errors naming the argument or the module type; the model is left untouched ----------


def test_refuses_models_without_vit_blocks():
    with pytest.raises(TypeError, match=r"model: .*ResNet has no transformer block"):
        patch(timm.create_model("resnet10t", pretrained=False))


def test_refuses_other_timm_block_types():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2,
                              block_fn=ResPostBlock)
    with pytest.raises(TypeError, match=r"blocks.0: timm.models.vision_transformer.ResPostBlock is not supported"):
        patch(model)


def test_refuses_attention_dropout_and_leaves_model_untouched():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=3, attn_drop_rate=0.1)
    with pytest.raises(ValueError, match=r"blocks.0.attn.attn_drop: expected p=0 .*got p=0.1"):
        patch(model)
    assert all(type(b).__name__ == "Block" for b in model.blocks) and patch_report(model) is None


def test_refuses_pooling_without_class_token():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2, class_token=False,
                              global_pool="avg")
    with pytest.raises(ValueError, match="needs a class token"):
        patch(model, keep_rates={0: 0.5})


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(keep_rates={3: 1.5}), ValueError, r"keep_rates\[3\]: expected a rate in \(0, 1\].*got 1.5"),
    (dict(keep_rates=[0.5] * 11 + [0.0]), ValueError, r"keep_rates\[11\]: expected a rate in \(0, 1\].*got 0.0"),
    (dict(keep_rates=[0.5] * 3), ValueError, r"keep_rates: expected one rate per block \(12 entries"),
    (dict(keep_rates={12: 0.5}), ValueError, r"keep_rates: expected layer indices in \[0, 12\).*got key 12"),
    (dict(keep_rates=0.5), TypeError, r"keep_rates: expected None, a list of rates or a \{layer: rate\} dict"),
    (dict(score="max"), ValueError, r"score: expected one of \('logit_sum', 'prob_mean'\), got 'max'"),
    (dict(keep_rule="floor"), ValueError, r"keep_rule: expected one of \('apvit', 'evit'\), got 'floor'"),
    (dict(attention=False), ValueError, "nothing to patch"),
])
def test_refuses_bad_arguments(kwargs, error, match):
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(error, match=match):
        patch(model, **kwargs)
    assert patch_report(model) is None


def test_refuses_double_patch_unpatched_model_and_compiled_model():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2)
    with pytest.raises(ValueError, match="was not patched"):
        unpatch(model)
    with pytest.raises(TypeError, match="torch.compile'd module"):
        patch(torch.compile(model))
    patch(model)
    with pytest.raises(ValueError, match="already patched"):
        patch(model)
