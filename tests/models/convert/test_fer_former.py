"""FER-former converters (fastfer/models/convert/fer_former.py): official ModelClassifier layout → fastfer (dead
weight dropped, head rows to canonical), face.evoLVe IR-50 → backbone, timm loading and the CLI."""
import pytest
import timm
import torch
from safetensors.torch import load_file

import fastfer.models.fer_former  # noqa: F401
from fastfer.cli import main as cli_main
from fastfer.labels import EXPRESSIONS, NATIVE_ORDERS
from fastfer.models.convert.fer_former import (
    convert_evolve_ir50,
    convert_official,
    load_official,
)
from fastfer.models.convert import fer_former_conversion
from fastfer.models.irse import IRSE, STAGE_UNITS
from fastfer.models.weights import read_metadata
from tests.models.official_ferformer import to_official


def tiny(**kw):
    torch.manual_seed(0)
    return timm.create_model("fer_former_tiny", **kw).eval()


class RandomText:
    def encode(self, prompts):
        return torch.randn(len(prompts), 512, generator=torch.Generator().manual_seed(3))


class RandomMetaText:
    def encode(self, prompts):
        return torch.empty(len(prompts), 512, device="cpu")


@pytest.fixture(scope="module")
def source():
    model = tiny(text_encoder=RandomText())  # with a text head: the release always holds fc2 (→ text_proj)
    with torch.no_grad():
        model.head.bias.copy_(torch.arange(7.0))  # canonical row i has bias i
    return model


def test_official_keys_map_one_to_one_and_dead_weight_is_dropped(source):
    official = to_official(source.state_dict(), num_stages=2)
    dropped = []
    converted = convert_official(official, num_stages=2, dropped=dropped)
    expected = {k for k in source.state_dict()} - {"text_embed"}  # the release stores no CLIP features
    assert set(converted) == expected and "text_proj.weight" in converted
    for key in expected:
        assert torch.equal(converted[key], source.state_dict()[key]), key
    assert "token2.1.weight" in dropped and "fc1.bias" in dropped and "vit.pos_embed" in dropped
    assert "backbone.body.23.res_layer.1.weight" in dropped and "backbone.output_layer.3.weight" in dropped
    assert sum(k.startswith("model.model.") for k in dropped) == sum(k.startswith("backbone.") for k in official)


def test_head_rows_follow_the_names(source):
    official = to_official(source.state_dict(), num_stages=2)
    native_bias = official["vit.head.0.bias"]
    assert [EXPRESSIONS[int(b)] for b in native_bias] == ["surprise", "fear", "disgust", "happy", "sad", "anger",
                                                          "neutral"]  # RAF-DB order, as released
    assert torch.equal(convert_official(official, num_stages=2)["head.bias"], torch.arange(7.0))


def test_wrapped_and_prefixed_checkpoints_convert(source):
    official = to_official(source.state_dict(), num_stages=2)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in official.items()}}
    a, b = convert_official(wrapped, num_stages=2), convert_official(official, num_stages=2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_timm_pretrained_from_an_official_file_and_the_cli(source, tmp_path):
    official_path = tmp_path / "raf.pth"
    official = to_official(source.state_dict(), num_stages=2)
    torch.save(official, official_path)
    loaded = timm.create_model("fer_former_tiny", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(official_path))).eval()
    x = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(loaded(x), source(x))
    assert not loaded.text_ready and loaded.text_proj is not None  # fc2 adopted, features to be built
    torch.testing.assert_close(loaded.text_proj.weight, source.text_proj.weight)
    dst = tmp_path / "fer_former.safetensors"
    assert cli_main(["convert", "--from", "fer-former", str(official_path), str(dst), "--ir-stages", "2"]) == 0
    written = load_file(str(dst))
    assert written.keys() == source.state_dict().keys() - {"text_embed"}
    assert torch.equal(written["head.bias"], torch.arange(7.0))
    assert read_metadata(dst) == {}  # not the paper's configuration: no model metadata to rebuild from


def test_a_paper_configuration_conversion_names_its_model():
    with torch.device("meta"):
        paper = timm.create_model("fer_former", text_encoder=RandomMetaText())
    conv = fer_former_conversion(to_official(paper.state_dict()))
    assert conv.complete and conv.model_metadata() == dict(
        model="fer_former", model_kwargs=dict(text_token="cls"), source="fer-former", num_classes=7,
        label_names=list(EXPRESSIONS[:7]))  # the release feeds token 0 to both heads


def test_official_errors(source):
    official = to_official(source.state_dict(), num_stages=2)
    with pytest.raises(ValueError, match="not in the official FER-former layout .*'something.else'"):
        convert_official({**official, "something.else": torch.zeros(1)}, num_stages=2)
    with pytest.raises(ValueError, match="no 'vit.head.0.weight'"):
        convert_official({k: v for k, v in official.items() if not k.startswith("vit.head")}, num_stages=2)
    with pytest.raises(ValueError, match="native_labels: the head has 7 rows, got 8 names"):
        convert_official(official, native_labels=EXPRESSIONS, num_stages=2)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_official(tiny(), {k: v for k, v in official.items() if not k.startswith("vit.blocks.1.")})
    eight = NATIVE_ORDERS["fer_former"] + ("contempt",)
    assert convert_official({**official, "vit.head.0.weight": torch.randn(8, 64), "vit.head.0.bias": torch.randn(8)},
                            native_labels=eight, num_stages=2)["head.weight"].shape == (8, 64)


def test_evolve_ir50_initialises_the_backbone():
    trunk = IRSE(num_stages=4)
    flat = {}
    starts = [sum(STAGE_UNITS[50][:s]) for s in range(4)]
    for key, value in trunk.state_dict().items():
        if key.startswith("body."):
            s, u, rest = key[len("body."):].split(".", 2)
            flat[f"body.{starts[int(s)] + int(u)}.{rest}"] = value
        else:
            flat[key] = value
    flat["output_layer.3.weight"] = torch.zeros(2, 2)
    dropped = []
    converted = convert_evolve_ir50(flat, num_stages=3, dropped=dropped)
    model = timm.create_model("fer_former")
    result = model.load_state_dict(converted, strict=False)
    assert not any(k.startswith("backbone.") for k in result.missing_keys) and result.unexpected_keys == []
    assert torch.equal(model.backbone.body[2][13].res_layer[1].weight, trunk.body[2][13].res_layer[1].weight)
    assert "output_layer.3.weight" in dropped and "body.23.res_layer.1.weight" in dropped
    with pytest.raises(ValueError, match="not face.evoLVe IR-50 keys"):
        convert_evolve_ir50({"head.weight": torch.zeros(1)})
