"""Converters: official APViT / face.evoLVe IR-50 / timm v0.1 ViT-S checkpoints → fastfer, and their errors."""
import json

import pytest
import torch

import fastfer
from safetensors import safe_open

import fastfer.models  # noqa: F401
from fastfer.cli import main as cli_main
from fastfer.labels import EXPRESSIONS, normalize_name, order_map, permute_rows
from fastfer.models import create_model
from fastfer.models.convert.apvit import APVIT_ORDER, convert_apvit_mmcls, convert_ir50_evolve, convert_vit_small_v01
from fastfer.models.weights import load_model, load_partial, read_metadata
from fastfer.models.weights import read_state_dict as read_checkpoint
from fastfer.utils.errors import CheckpointError
from fastfer.models.irse import IRSE, STAGE_UNITS
from tests.models.official_apvit import APVIT_TO_CANONICAL

pytestmark = [pytest.mark.usefixtures("one_intra_op_thread"), pytest.mark.backend("torch")]


def test_apvit_order_maps_to_canonical_as_in_the_datasets_table():
    # docs/datasets.md §2: APViT internal → canonical 6, 5, 4, 2, 1, 3, 0, 7
    assert [EXPRESSIONS.index(normalize_name(n)) for n in APVIT_ORDER] == list(APVIT_TO_CANONICAL)
    rows = torch.arange(7.0)
    mapping = order_map(APVIT_ORDER[:7], EXPRESSIONS[:7])
    assert permute_rows(rows, mapping).tolist() == [6, 4, 3, 5, 2, 1, 0]  # canonical row j ← native row i


def test_official_checkpoint_round_trip_gives_the_transcription_logits(paper_case, tmp_path):
    """Official-format .pth (random values, official key names, head in APViT order) → `fastfer convert` →
    safetensors → timm.create_model(pretrained file) → logits equal the transcription's on the raw tensors."""
    src, dst = tmp_path / "APViT_RAF.pth", tmp_path / "apvit_rafdb.safetensors"
    torch.save({"state_dict": paper_case["official"], "meta": {"epoch": 40, "CLASSES": list(APVIT_ORDER[:7])}}, src)
    assert cli_main(["convert", "--from", "apvit-mmcls", str(src), str(dst)]) == 0
    with safe_open(str(dst), "pt") as f:
        assert json.loads(f.metadata()["label_names"]) == list(EXPRESSIONS[:7])
    model = create_model("apvit", weights=dst).eval()
    rebuilt, meta = load_model(dst)  # a complete conversion names its model: the file alone rebuilds it
    assert meta["model"] == "apvit" and meta["source"] == "apvit-mmcls" and rebuilt.label_names == EXPRESSIONS[:7]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    with torch.no_grad():
        logits = model(paper_case["x"])
    ref_logits = paper_case["ref"][0]  # APViT order
    torch.testing.assert_close(logits[:, list(APVIT_TO_CANONICAL[:7])], ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(logits, paper_case["logits"])  # same weights as the randomised model it came from


def test_official_pth_loads_directly_through_timm(tmp_path):
    """timm's pretrained path runs the checkpoint filter, which converts an official-format file on load."""
    from tests.models.official_apvit import randomize_, to_official

    torch.manual_seed(0)
    source = randomize_(create_model("apvit_tiny"), seed=2).eval()
    path = tmp_path / "official_tiny.pth"
    torch.save({"state_dict": to_official(source.state_dict())}, path)
    loaded = create_model("apvit_tiny", weights=path).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def _official_copy(paper_case):
    return dict(paper_case["official"])


def test_apvit_converter_errors_name_the_keys(paper_case):
    sd = _official_copy(paper_case)
    sd["vit.blocks.0.attn.qkv.weight"] = torch.zeros(2304, 384)
    with pytest.raises(CheckpointError, match=r"qkv.weight: expected shape \(2304, 768\).*got \(2304, 384\)"):
        convert_apvit_mmcls(sd)
    sd = _official_copy(paper_case)
    del sd["vit.blocks.7.mlp.fc2.bias"], sd["vit.norm.weight"]
    with pytest.raises(CheckpointError, match="2 keys missing from the checkpoint: blocks.7.mlp.fc2.bias, norm.weight"):
        convert_apvit_mmcls(sd)
    sd = _official_copy(paper_case)
    sd["vit.blocks.8.norm1.weight"] = torch.ones(768)
    with pytest.raises(CheckpointError, match="keys the model does not have: blocks.8.norm1.weight"):
        convert_apvit_mmcls(sd)
    sd["neck.fc.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError, match="key 'neck.fc.weight' is not part of an APViT checkpoint"):
        convert_apvit_mmcls(sd)
    conv = convert_apvit_mmcls(sd, strict=False)
    assert conv.dropped == ["neck.fc.weight", "blocks.8.norm1.weight"]
    sd = _official_copy(paper_case)
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(6, 768), torch.zeros(6)
    with pytest.raises(CheckpointError, match="head.fc.weight: expected 7 or 8 classes"):
        convert_apvit_mmcls(sd)


def test_module_prefix_and_missing_bn_counters_are_handled(paper_case):
    sd = {"module." + k: v for k, v in paper_case["official"].items() if not k.endswith("num_batches_tracked")}
    conv = convert_apvit_mmcls({"state_dict": sd})
    assert conv.filled and all(k.endswith("num_batches_tracked") for k in conv.filled)
    assert conv.state_dict["extractor.input_layer.1.num_batches_tracked"].dtype == torch.int64


def _random_like_shapes(module, gen):
    return {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros((), dtype=v.dtype))
            for k, v in module.state_dict().items()}


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # load_partial into a meta-device model checks names only
def test_ir50_evolve_converter_keeps_three_stages(tmp_path):
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        full = IRSE(50, num_stages=4)
    nested = _random_like_shapes(full, gen)
    offsets = [sum(STAGE_UNITS[50][:s]) for s in range(4)]
    flat = {}
    for key, value in nested.items():  # face.evoLVe layout: body.{0..23} flat, plus the embedding layer
        if key.startswith("body."):
            _, s, u, rest = key.split(".", 3)
            key = f"body.{offsets[int(s)] + int(u)}.{rest}"
        flat[key] = value
    flat["output_layer.4.weight"] = torch.ones(512)
    conv = convert_ir50_evolve(flat)
    assert all(k.startswith("extractor.") for k in conv.state_dict)
    assert torch.equal(conv.state_dict["extractor.body.2.13.res_layer.3.weight"], flat["body.20.res_layer.3.weight"])
    assert torch.equal(conv.state_dict["extractor.input_layer.0.weight"], flat["input_layer.0.weight"])
    assert "output_layer.4.weight" in conv.dropped and "body.23.res_layer.1.weight" in conv.dropped
    with torch.device("meta"):
        model = create_model("apvit")
    missing = load_partial(model, conv.state_dict)
    assert missing and not any(k.startswith("extractor.") for k in missing)
    src, dst = tmp_path / "backbone_ir50_ms1m_epoch120.pth", tmp_path / "ir50_part.safetensors"
    torch.save(flat, src)
    assert cli_main(["convert", "--from", "ir50-evolve", str(src), str(dst), "--ir-stages", "2"]) == 0
    written = read_checkpoint(dst)
    assert "extractor.body.1.3.res_layer.1.weight" in written and not any(k.startswith("extractor.body.2.")
                                                                          for k in written)
    assert read_metadata(dst) == {}  # a part (for load_partial), not a model to rebuild
    del flat["body.5.res_layer.1.weight"]
    with pytest.raises(CheckpointError, match="missing from the checkpoint: extractor.body.1.2.res_layer.1.weight"):
        convert_ir50_evolve(flat)


def _vit_small_v01(gen):
    """timm v0.1 vit_small_patch16_224 state_dict: 768-d, 8 blocks, 8 heads, MLP 3×, no qkv bias."""
    sd = {"cls_token": torch.randn(1, 1, 768, generator=gen), "pos_embed": torch.randn(1, 197, 768, generator=gen),
          "patch_embed.proj.weight": torch.randn(768, 3, 16, 16, generator=gen),
          "patch_embed.proj.bias": torch.zeros(768),
          "norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
          "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)}
    for i in range(8):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": torch.ones(768), p + "norm1.bias": torch.zeros(768),
                   p + "attn.qkv.weight": torch.randn(2304, 768, generator=gen),
                   p + "attn.proj.weight": torch.randn(768, 768, generator=gen), p + "attn.proj.bias": torch.zeros(768),
                   p + "norm2.weight": torch.ones(768), p + "norm2.bias": torch.zeros(768),
                   p + "mlp.fc1.weight": torch.randn(2304, 768, generator=gen), p + "mlp.fc1.bias": torch.zeros(2304),
                   p + "mlp.fc2.weight": torch.randn(768, 2304, generator=gen), p + "mlp.fc2.bias": torch.zeros(768)})
    return sd


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_vit_small_v01_converter_splits_the_position_embedding():
    sd = _vit_small_v01(torch.Generator().manual_seed(0))
    conv = convert_vit_small_v01(sd)
    out = conv.state_dict
    assert torch.equal(out["cls_pos_embed"], sd["pos_embed"][:, :1]) and out["cls_pos_embed"].shape == (1, 1, 768)
    assert torch.equal(out["patch_pos_embed"], sd["pos_embed"][:, 1:]) and out["patch_pos_embed"].shape == (1, 196, 768)
    assert torch.equal(out["blocks.5.attn.qkv.weight"], sd["blocks.5.attn.qkv.weight"])
    assert sorted(conv.dropped) == ["head.bias", "head.weight", "patch_embed.proj.bias", "patch_embed.proj.weight"]
    with torch.device("meta"):
        model = create_model("apvit")
    missing = load_partial(model, out)
    assert all(k.startswith(("extractor.", "proj.", "head.")) for k in missing) and "proj.weight" in missing
    sd["pos_embed"] = torch.zeros(1, 50, 768)
    with pytest.raises(CheckpointError, match=r"pos_embed: expected shape \(1, 197, 768\).*got \(1, 50, 768\)"):
        convert_vit_small_v01(sd)


def test_load_partial_rejects_unknown_keys_and_bad_shapes():
    model = create_model("apvit_tiny")
    with pytest.raises(CheckpointError, match="keys the model does not have: vit.norm.weight"):
        load_partial(model, {"vit.norm.weight": torch.ones(128)})
    with pytest.raises(CheckpointError, match=r"norm.weight: expected shape \(128,\), got \(768,\)"):
        load_partial(model, {"norm.weight": torch.ones(768)})
    weight = torch.randn(128, 32, 1, 1)
    assert "proj.weight" not in load_partial(model, {"proj.weight": weight})
    assert torch.equal(model.proj.weight, weight)


def test_unreadable_checkpoints_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth.*cannot be read"):
        read_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors.*cannot be read"):
        read_checkpoint(garbage)
    pickled = tmp_path / "pickled_module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module: refused by weights_only=True
    with pytest.raises(CheckpointError, match="pickled_module.pth.*cannot be read"):
        read_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="absent.pth.*no such file"):
        read_checkpoint(tmp_path / "absent.pth")
    not_tensors = tmp_path / "meta_only.pth"
    torch.save({"state_dict": {"epoch": 3}}, not_tensors)
    with pytest.raises(CheckpointError, match="meta_only.pth: expected tensors only.*epoch"):
        read_checkpoint(not_tensors)


def _run_cli(argv):
    return cli_main(argv)


def test_cli_converts_and_reports(tmp_path, capsys):
    src, dst = tmp_path / "vit_small_p16_224.pth", tmp_path / "vit_part.safetensors"
    torch.save(_vit_small_v01(torch.Generator().manual_seed(1)), src)
    assert _run_cli(["convert", "--from", "vit-small-v01", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "vit-small-v01: 93 tensors converted" in out and "dropped 4 source keys" in out
    assert "patch_pos_embed" in read_checkpoint(dst)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(src.read_bytes()[:1000])
    assert _run_cli(["convert", "--from", "vit-small-v01", str(bad), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "broken.pth" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _run_cli(["convert", "--from", "ir50-evolve", str(src), str(tmp_path / "x.pth")]) == 2
    assert "expected a .safetensors path" in capsys.readouterr().err


def test_cli_lists_every_source(capsys):
    assert cli_main(["convert", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert listed == ["apvit-mmcls", "ir50-evolve", "vit-small-v01", "fer-former", "convnext-b", "conv-cut-keras"]
    assert cli_main(["convert", "--from", "keras", "a.h5", "b.safetensors"]) == 2
    assert "--from: expected one of apvit-mmcls, ir50-evolve" in capsys.readouterr().err
