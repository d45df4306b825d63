"""timm's model contract, checked on every model fastfer registers (new models join automatically).

What timm's generic model tests ask of a model — a forward at the registered input size, a backward that
reaches every parameter, unpooled features with ``num_features`` channels and pre-logits with
``head_hidden_size``, ``reset_classifier(0)`` / ``reset_classifier(0, '')`` / ``create_model(num_classes=0,
global_pool='')``, cfg names that exist, ``feature_info`` + ``forward_intermediates`` +
``prune_intermediate_layers`` + ``features_only=True`` (timm's FeatureGetterNet), FX tracing with timm's tracer
settings, gradient checkpointing — written for fastfer's models. Token models (``forward_features`` →
(B, N, C)) are checked the way timm checks its ViTs, map models ((B, C, H, W)) the way it checks ConvNeXt.

Cost: the paper-size models run on the meta device (shapes, names, autograd reach; no memory, no compute),
the ``*_tiny`` variants run for real.
"""
import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import fastfer.models  # noqa: F401  (registers the models)

pytestmark = [pytest.mark.backend("torch"), pytest.mark.usefixtures("one_intra_op_thread")]

MODELS = sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("fastfer."))
TINY = [n for n in MODELS if n.endswith("_tiny")]
TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)
SMALL_INPUT = 96  # timm's feature-test size, for models without a fixed input size


def build(name: str, **kwargs):
    """The paper-size models on the meta device, the tiny ones for real (seeded)."""
    torch.manual_seed(0)
    if name.endswith("_tiny"):
        return timm.create_model(name, **kwargs)
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def images(model, batch: int = 1, small: bool = False) -> torch.Tensor:
    cfg = model.pretrained_cfg
    size = cfg["input_size"]
    if small and not cfg.get("fixed_input_size"):
        size = (3, min(size[1], SMALL_INPUT), min(size[2], SMALL_INPUT))
    device = next(model.parameters()).device
    return torch.randn(batch, *size, generator=None if device.type == "meta" else torch.Generator().manual_seed(1),
                       device=device)


def is_tokens(features: torch.Tensor) -> bool:
    return features.dim() == 3  # (B, N, C) as timm's ViTs; else (B, C, H, W)


def test_every_fastfer_model_is_checked():
    assert MODELS == ["apvit", "apvit_tiny", "conv_cut", "conv_cut_tiny", "fer_former", "fer_former_tiny"]


@pytest.mark.parametrize("name", MODELS)
def test_attributes_and_cfg_names(name):
    model = build(name).eval()
    cfg, sd = model.pretrained_cfg, model.state_dict()
    assert model.num_classes == cfg["num_classes"] == 7 and model.label_names == tuple(cfg["label_names"])
    assert model.num_features > 0 and model.head_hidden_size > 0
    assert cfg["classifier"] + ".weight" in sd and model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert cfg["first_conv"] + ".weight" in sd
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["input_size"][0] == 3
    features = model.forward_features(images(model))
    if not is_tokens(features):
        assert tuple(features.shape[-2:]) == tuple(cfg["pool_size"])  # timm's std check of map models


@pytest.mark.parametrize("name", MODELS)
def test_features_head_and_classifier_reset(name):
    model = build(name).eval()
    x = images(model, batch=2)
    features = model.forward_features(x)
    channel_axis = -1 if is_tokens(features) else 1
    assert features.shape[channel_axis] == model.num_features
    pre = model.forward_head(features, pre_logits=True)
    assert pre.shape == (2, model.head_hidden_size)
    assert model(x).shape == (2, 7)

    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)  # pooled features, as pre-logits
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, "")  # unpooled: the forward_features output
    assert model(x).shape == features.shape
    assert build(name, num_classes=0)(x).shape == pre.shape
    assert build(name, num_classes=0, global_pool="")(x).shape == features.shape


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = build(name, num_classes=5).train()
    out = model(images(model, batch=2, small=True))
    assert out.shape == (2, 5)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters forward never reaches: {missing}"
    if name in TINY:
        assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    model = build(name).eval()
    x = images(model, small=True)
    info = model.feature_info
    reductions = [level["reduction"] for level in info]
    assert len(info) >= 3 and reductions == sorted(reductions)
    assert all(model.get_submodule(level["module"]) is not None for level in info)
    final, maps = model.forward_intermediates(x)
    assert len(maps) == len(info)
    for level, m in zip(info, maps):
        assert m.dim() == 4 and m.shape[:2] == (1, level["num_chs"])
        assert all(s <= math.ceil(size / level["reduction"]) + 1 for s, size in zip(m.shape[-2:], x.shape[-2:]))
    features = model.forward_features(x)
    assert final.shape == features.shape
    if name in TINY:
        torch.testing.assert_close(final, features)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert isinstance(last_two, list) and [t.shape for t in last_two] == [t.shape for t in maps[-2:]]
    picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [t.shape for t in picked] == [maps[0].shape, maps[-1].shape]
    _, early = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert len(early) == 1 and early[0].shape == maps[1].shape
    with pytest.raises(ValueError, match="indices: feature index 99 is out of range"):
        model.forward_intermediates(x, indices=[99])
    with pytest.raises(ValueError, match="output_fmt: expected one of"):
        model.forward_intermediates(x, output_fmt="NHWC")
    if is_tokens(features):
        _, tokens = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
        assert all(t.dim() == 3 and t.shape[-1] == model.num_features and p.shape[:2] == (1, features.shape[1] -
                                                                                            tokens[-1][0].shape[1])
                   for t, p in tokens)
    else:
        with pytest.raises(ValueError, match="output_fmt: Conv-cut's features are maps"):
            model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", TINY)
def test_features_only_is_timms_getter_over_the_intermediates(name):
    reference = build(name).eval()
    x = images(reference, small=True)
    for out_indices in (None, (0, 1)):
        kwargs = {} if out_indices is None else dict(out_indices=out_indices)
        features = build(name, features_only=True, **kwargs).eval()  # same seed: same weights before pruning
        assert type(features).__name__ == "FeatureGetterNet"  # timm's wrapper over forward_intermediates
        indices = list(features.out_indices)
        expected = reference.forward_intermediates(x, indices=indices, intermediates_only=True)
        outputs = features(x)
        assert features.feature_info.channels() == [reference.feature_info[i]["num_chs"] for i in indices]
        assert len(outputs) == len(expected) >= 2
        for got, want in zip(outputs, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", TINY)
def test_prune_intermediate_layers_keeps_what_is_asked(name):
    model = build(name).eval()
    x = images(model, small=True)
    full = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers([0, 1])
    assert kept == [0, 1] and len(model.feature_info) == 2 and model.num_classes == 0
    pruned = model.forward_intermediates(x, intermediates_only=True)
    for got, want in zip(pruned, full[:2]):
        torch.testing.assert_close(got, want)


def _fx(model):
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=TRACER)


@pytest.mark.parametrize("name", TINY)
def test_fx_traces_with_timms_tracer_settings(name):
    """torchvision's feature extractor traces the forward (ops as leaf calls, no Python branch on shapes) and
    the traced graph computes exactly what the model does, forward and backward."""
    model = build(name).eval()
    x = images(model, small=True)
    with torch.no_grad():
        eager = model(x)
        traced = next(iter(_fx(model)(x).values()))
    assert torch.equal(traced, eager)
    model = build(name, num_classes=5).train()
    graph = _fx(model)
    out = next(iter(graph(images(model, batch=2, small=True)).values()))
    out.mean().backward()
    assert out.shape == (2, 5) and all(p.grad is not None for p in graph.parameters())


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_changes_nothing_but_memory(name):
    model = build(name).eval()  # eval: no dropout draws, so both passes see the same function
    x = images(model, batch=2, small=True)
    plain = model(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    again = model(x)
    again.sum().backward()
    torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", TINY)
def test_eager_calls_check_their_input(name):
    model = build(name).eval()
    with pytest.raises(ValueError, match=r"x: expected a \(B, 3, .*got shape \(1, 1, "):
        model(torch.randn(1, 1, 112, 112))
