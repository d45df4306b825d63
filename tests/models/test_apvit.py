"""APViT: paper configuration, agreement with the official forward, backends, contract, compile, training."""
import pytest
import timm
import torch

import fastfer
import torch.nn.functional as F

import fastfer.models  # noqa: F401  (registers apvit / apvit_tiny with timm)
from fastfer.models import APViT, create_model
from fastfer.models.apvit import APVIT_TINY_CONFIG
from fastfer.labels import EXPRESSIONS
from tests.models.official_apvit import APVIT_TO_CANONICAL, TINY, official_forward, randomize_, to_official

pytestmark = [pytest.mark.usefixtures("one_intra_op_thread"), pytest.mark.backend("torch")]


def test_paper_config_parameter_count_and_token_plan():
    with torch.device("meta"):
        model = timm.create_model("apvit")
    # docs/models/apvit.md §7: 17,611,968 (IR-50 ×3 stages) + 197,376 + 152,064 + 47,242,752 + 5,383.
    assert sum(p.numel() for p in model.parameters()) == 65_209_543
    assert model.token_counts() == [161, 161, 161, 161, 161, 145, 130, 117, 105]
    assert model.blocks[0].attn.scale == pytest.approx(96**-0.5)
    assert model.blocks[0].attn.qkv.bias is None and model.norm.eps == 1e-6
    assert model.blocks[0].mlp.fc1.out_features == 2304


def test_token_counts_per_block_in_a_real_forward(paper_case):
    details = paper_case["details"]
    assert details["app_index"].shape == (2, 160) and details["app_scores"].shape == (2, 14, 14)
    assert [idx.shape[1] for idx in details["block_index"]] == [161, 161, 161, 161, 145, 130, 117, 105]
    assert paper_case["tokens"].shape == (2, 105, 768)
    for idx in details["block_index"]:
        assert (idx[:, 0] == 0).all() and (idx[:, 1:].diff(dim=1) > 0).all()  # CLS first, then positional order


def test_model_equals_official_transcription(paper_case):
    """Random weights, fp32: fastfer's APViT (fused-op layers, torch backend) vs the plain official forward."""
    ref_logits, ref_map, ref_app, ref_blocks = paper_case["ref"]
    details = paper_case["details"]
    # The transcription's head is in APViT order: its logit i is the model's canonical logit APVIT_TO_CANONICAL[i].
    logits = paper_case["logits"][:, list(APVIT_TO_CANONICAL[:7])]
    assert logits.abs().max() > 0.1  # a live head, not the zero init
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(details["app_scores"], ref_map, rtol=1e-5, atol=1e-4)
    assert torch.equal(details["app_index"], ref_app)
    for ours, theirs in zip(details["block_index"], ref_blocks):
        assert torch.equal(ours, theirs)


def test_token_positions_follow_the_kept_indices(paper_case):
    details = paper_case["details"]
    pos = details["app_index"]
    for idx, positions in zip(details["block_index"], details["token_positions"]):
        pos = pos.gather(1, idx[:, 1:] - 1)
        assert torch.equal(positions, pos)
    assert set(details["token_positions"][-1][0].tolist()) <= set(details["app_index"][0].tolist())


def _tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_(create_model("apvit_tiny", **kwargs), seed=seed).eval()


def test_tiny_variant_equals_transcription_too():
    model = _tiny()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        logits = model(x)
        ref = official_forward(to_official(model.state_dict()), x, TINY)[0]
    torch.testing.assert_close(logits[:, list(APVIT_TO_CANONICAL[:7])], ref, rtol=0, atol=1e-5)
    assert model.token_counts() == [97, 97, 97, 87, 78]
    assert sum(p.numel() for p in model.parameters()) == 710_391


def test_triton_backend_matches_torch_logits_and_indices():
    """Tolerance rule (docs/kernels.md §7): |triton − fp64| ≤ 2·|torch fp32 − fp64| + 1e-5; identical kept indices."""
    model = _tiny()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref64 = model.double()(x.double())
        model.float()
        out_torch, det_torch = model.forward_features(x, return_details=True)
        with fastfer.use_backend("triton"):
            out_triton, det_triton = model.forward_features(x, return_details=True)
        logits_torch, logits_triton = model.forward_head(out_torch), model.forward_head(out_triton)
    base = (logits_torch.double() - ref64).abs().max().item()
    err = (logits_triton.double() - ref64).abs().max().item()
    assert err <= 2 * base + 1e-5, f"triton error {err:.3g} vs torch fp32 error {base:.3g}"
    assert torch.equal(det_torch["app_index"], det_triton["app_index"])
    for a, b in zip(det_torch["block_index"], det_triton["block_index"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch", [17, 15])
def test_batch_equal_to_token_count_still_pools(batch):
    """The official code skips pruning when B equals the block's token count (161, 145, …); fastfer does not.
    Here APP keeps 16 so the pooling blocks see 17 then 15 tokens; B takes each of those values."""
    model = create_model("apvit_tiny", patch_keep=16).eval()
    with torch.no_grad():
        tokens, details = model.forward_features(torch.randn(batch, 3, 112, 112), return_details=True)
    assert [idx.shape[1] for idx in details["block_index"]] == [17, 17, 15, 13]
    assert tokens.shape == (batch, 13, 128)


def test_model_contract():
    model = create_model("apvit_tiny", num_classes=5).eval()
    x = torch.randn(2, 3, 112, 112)
    assert model.num_classes == 5 and model.num_features == model.head_hidden_size == 128
    assert model.get_classifier() is model.head and model.label_names is None
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == EXPRESSIONS[:7] and cfg["input_size"] == (3, 112, 112)
    assert cfg["mean"] == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))
    assert cfg["std"] == pytest.approx((58.395 / 255, 57.12 / 255, 57.375 / 255))
    keys = model.state_dict().keys()
    assert cfg["classifier"] + ".weight" in keys and cfg["first_conv"] + ".weight" in keys
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 78, 128)
        assert model.forward_head(tokens).shape == (2, 5)
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, tokens[:, 0])
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), tokens)
        model.reset_classifier(7, "avg")
        assert model.label_names == EXPRESSIONS[:7] and (model.head.weight == 0).all()
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
    unpooled = create_model("apvit_tiny", num_classes=0, global_pool="").eval()
    unpooled.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(unpooled(x), tokens)
    assert {"apvit", "apvit_tiny"} <= set(timm.list_models("apvit*"))


def test_pretrained_file_overlay_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    source = _tiny(seed=3)
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    x = torch.randn(1, 3, 112, 112)
    loaded = timm.create_model("apvit_tiny", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    same = create_model("apvit_tiny", weights=path).eval()
    with torch.no_grad():
        expected = source(x)
        assert torch.equal(loaded(x), expected) and torch.equal(same(x), expected)
    new_head = create_model("apvit_tiny", weights=path, num_classes=3)  # head dropped, trunk kept
    assert new_head.head.weight.shape == (3, 128) and torch.equal(new_head.proj.weight, source.proj.weight)
    with pytest.raises(FileNotFoundError, match="weights: no such file"):
        create_model("apvit_tiny", weights=tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_chans=1), "in_chans: APViT's IR trunk takes RGB input, expected 3, got 1"),
        (dict(global_pool="max"), "global_pool: expected one of"),
        (dict(patch_keep=197), r"patch_keep: expected an int in 1..196"),
        (dict(keep_rates=(1.0, 0.9)), r"keep_rates: expected one rate per block \(depth=4\), got 2"),
        (dict(img_size=100), r"img_size: expected multiples of 8"),
        (dict(num_classes=3, label_names=("a", "b")), "label_names: expected 3 names"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APViT(**{**APVIT_TINY_CONFIG, **kwargs})


def test_wrong_input_size_is_a_clear_error():
    model = create_model("apvit_tiny")
    with pytest.raises(ValueError, match=r"x: expected a \(B, 3, 112, 112\) image batch, got shape \(1, 3, 96, 96\)"):
        model(torch.randn(1, 3, 96, 96))


def test_torch_compile_matches_eager():
    """Inductor on CPU, one graph: the tiny model cut to 2 blocks (one plain, one pooling) to keep the compile
    at ≈25 s here; every layer kind of the full model (IR units, APP, ATP, head) is in it."""
    torch.manual_seed(1)
    model = randomize_(create_model("apvit_tiny", depth=2, keep_rates=(1.0, 0.9)), seed=1).eval()
    x = torch.randn(2, 3, 112, 112)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = create_model("apvit_tiny").train()
    x, y = torch.randn(16, 3, 112, 112), torch.randint(0, 7, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(7.0)).item(), abs=1e-4)  # zero-initialised head
    assert losses[-1] < losses[0] - 0.15, losses  # measured: 1.946 → 1.635 (seed 0), 1.613 (seed 1)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("patch_pos_embed", "cls_token", "cls_pos_embed", "extractor.input_layer.0.weight",
                 "blocks.3.attn.qkv.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_intermediates_put_surviving_tokens_back_on_the_grid(paper_case):
    """NCHW intermediates: each block's patch tokens at their trunk-grid positions (the kept positions of
    return_details), zero where APP or ATP dropped the token; NLC: the tokens themselves."""
    model, x, details = paper_case["model"], paper_case["x"], paper_case["details"]
    with torch.no_grad(), fastfer.use_backend("torch"):
        final, maps = model.forward_intermediates(x, norm=True)
        _, tokens = model.forward_intermediates(x, indices=[4, 7], output_fmt="NLC", return_prefix_tokens=True)
    torch.testing.assert_close(final, paper_case["tokens"])
    assert [m.shape for m in maps] == [(2, 768, 14, 14)] * 8
    for block, (m, pos) in enumerate(zip(maps, details["token_positions"])):
        flat = m.flatten(2)  # (B, C, 196)
        occupied = flat.abs().sum(dim=1) > 0
        expected = torch.zeros_like(occupied).scatter_(1, pos, True)
        assert torch.equal(occupied, expected), block
    assert maps[-1].flatten(2).abs().sum(1).gt(0).sum(1).tolist() == [104, 104]  # 105 tokens minus CLS
    last_tokens, last_cls = tokens[-1]
    assert last_tokens.shape == (2, 104, 768) and last_cls.shape == (2, 1, 768) and tokens[0][0].shape == (2, 144, 768)
    grid = maps[-1].flatten(2).transpose(1, 2)  # (B, 196, C): the normed final tokens at their positions
    torch.testing.assert_close(grid.gather(1, details["token_positions"][-1][..., None].expand(-1, -1, 768)),
                               final[:, 1:])


def test_unpooled_mode_and_features_only():
    model = timm.create_model("apvit_tiny", num_classes=0, global_pool="").eval()
    x = torch.randn(1, 3, 112, 112)
    assert model(x).shape == (1, 78, 128)  # every token after the last block (token_counts()[-1])
    features = timm.create_model("apvit_tiny", features_only=True).eval()
    assert features.feature_info.channels() == [128] * 3 and features.feature_info.reduction() == [8] * 3
    assert [tuple(o.shape) for o in features(x)] == [(1, 128, 14, 14)] * 3


def test_head_init_std():
    # 0 (default): the paper's zero head; > 0: trunc-normal weights (zero bias), also after reset_classifier.
    assert (create_model("apvit_tiny").head.weight == 0).all()
    model = create_model("apvit_tiny", head_init_std=0.02)
    w = model.head.weight.detach()
    assert (w != 0).all() and 0.01 < float(w.std()) < 0.03
    assert (model.head.bias == 0).all()
    model.reset_classifier(3)
    assert (model.head.weight != 0).all() and model.head.weight.shape == (3, 128)
    for bad in (-0.1, True, "0.02", float("nan")):
        with pytest.raises(ValueError, match="head_init_std: expected a number >= 0"):
            create_model("apvit_tiny", head_init_std=bad)
