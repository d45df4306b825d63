"""Text encoders (fastfer/models/text_encoder.py): tensor files with metadata checks, the open_clip path from a
local file only (exercised with a stand-in open_clip module), prompts and errors."""
import sys
import types

import pytest
import torch

from fastfer.labels import EXPRESSIONS
from fastfer.models.text_encoder import (
    OpenClipTextEncoder,
    TensorFileTextEncoder,
    build_prompts,
    encode_labels,
    make_text_encoder,
    save_text_embed,
)

LABELS7 = EXPRESSIONS[:7]


def test_prompts_use_the_released_words_in_the_given_order():
    assert build_prompts(("neutral", "anger", "contempt")) == [
        "a face image of neutral", "a face image of angry", "a face image of contempt"]
    assert build_prompts(("happy",), "a {} expression is shown on the image") == [
        "a happy expression is shown on the image"]
    with pytest.raises(ValueError, match="template: expected a format string with one '{}'"):
        build_prompts(("happy",), "a face")


def test_tensor_file_round_trip_and_metadata(tmp_path):
    rows = torch.randn(7, 512).half()
    path = tmp_path / "clip.safetensors"
    save_text_embed(path, rows, LABELS7, encoder="openai ViT-B/32")
    enc = make_text_encoder(str(path))
    assert isinstance(enc, TensorFileTextEncoder)
    assert enc.label_names == LABELS7 and enc.encoder == "openai ViT-B/32" and enc.dtype == "float16"
    out = encode_labels(enc, LABELS7)
    assert out.dtype == torch.float32 and torch.equal(out, rows.float())


def test_torch_save_dict_is_read_with_weights_only(tmp_path):
    path = tmp_path / "clip.pt"
    rows = torch.randn(8, 512)
    torch.save({"text_embed": rows, "label_names": list(EXPRESSIONS), "template": "a face image of {}"}, path)
    assert torch.equal(encode_labels(TensorFileTextEncoder(path), EXPRESSIONS), rows)


def test_tensor_file_checks(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_text_embed(path, torch.randn(7, 512), LABELS7)
    enc = TensorFileTextEncoder(path)
    with pytest.raises(ValueError, match="do not match the model's"):
        encode_labels(enc, EXPRESSIONS)  # 8 labels asked, 7 stored
    with pytest.raises(ValueError, match="template 'a face image of {}' does not match the model's 'a {}'"):
        encode_labels(enc, LABELS7, "a {}")
    with pytest.raises(ValueError, match="holds features for prompts"):
        enc.encode(["a face image of happy"])
    with pytest.raises(FileNotFoundError, match="tensor file .*missing.safetensors' does not exist"):
        TensorFileTextEncoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"text_embed: expected a tensor of shape \(7, 512\), got \(7, 256\)"):
        save_text_embed(tmp_path / "bad.safetensors", torch.randn(7, 256), LABELS7)
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(1)}, str(tmp_path / "nokey.safetensors"))
    with pytest.raises(ValueError, match="expected a tensor named 'text_embed', found \\['other'\\]"):
        TensorFileTextEncoder(tmp_path / "nokey.safetensors")
    save_file({"text_embed": torch.zeros(7, 512)}, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match=r"metadata lacks \['label_names', 'template'\]"):
        TensorFileTextEncoder(tmp_path / "nometa.safetensors")


def test_make_text_encoder_dispatch():
    class Stub:
        def encode(self, prompts):
            return torch.zeros(len(prompts), 512)

    stub = Stub()
    assert make_text_encoder(None) is None and make_text_encoder(stub) is stub
    with pytest.raises(TypeError, match="text_encoder: expected None, a tensor-file path"):
        make_text_encoder(42)
    with pytest.raises(FileNotFoundError, match="fastfer never downloads weights"):
        make_text_encoder("open_clip:openai")  # a pretrained tag is not a local file: refused, not fetched
    with pytest.raises(ValueError, match=r"Bad.encode output: expected a tensor of shape \(7, 512\), got \(3, 512\)"):
        encode_labels(type("Bad", (), {"encode": lambda self, p: torch.zeros(3, 512)})(), LABELS7)


@pytest.fixture
def fake_open_clip(monkeypatch):
    """A stand-in open_clip recording how it is called (the real package is an optional extra)."""
    calls = {}

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Embedding(100, 512)

        def encode_text(self, tokens):
            calls["grad_enabled"] = torch.is_grad_enabled()
            calls["training"] = self.training
            return self.proj(tokens).sum(1).half()

    def create_model(name, pretrained=None, device=None):
        calls["create_model"] = (name, pretrained, device)
        return Tower()

    def get_tokenizer(name):
        calls["tokenizer"] = name
        return lambda texts: torch.tensor([[len(t) % 100, 1, 2] for t in texts])

    module = types.SimpleNamespace(create_model=create_model, get_tokenizer=get_tokenizer)
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return calls


def test_open_clip_encoder_loads_a_local_file_and_encodes_once(fake_open_clip, tmp_path):
    ckpt = tmp_path / "ViT-B-32.safetensors"
    ckpt.write_bytes(b"weights")
    enc = make_text_encoder(f"open_clip:{ckpt}")
    assert isinstance(enc, OpenClipTextEncoder)
    name, pretrained, _ = fake_open_clip["create_model"]
    assert name == "ViT-B-32-quickgelu" and pretrained == str(ckpt)  # a path, never a tag
    assert fake_open_clip["tokenizer"] == "ViT-B-32"
    out = encode_labels(enc, LABELS7)
    assert out.shape == (7, 512) and out.dtype == torch.float32
    assert fake_open_clip["grad_enabled"] is False and fake_open_clip["training"] is False


def test_open_clip_missing_package_says_what_to_install(monkeypatch, tmp_path):
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        OpenClipTextEncoder(ckpt)
