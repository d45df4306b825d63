"""Text encoders for FER-former's similarity head: class prompts → frozen CLIP text features.

FER-former compares its image feature with the CLIP text embedding of one prompt per class
("a face image of {word}"). Those embeddings are constant, so the model computes them **once** and keeps them
as a buffer (docs/models/ferformer.md D3); an encoder is needed only to build that buffer, never in ``forward``.

Two encoders, both offline:

- :class:`TensorFileTextEncoder` — a precomputed ``[C, 512]`` tensor in a safetensors (or ``torch.save``) file
  with metadata ``label_names``, ``template``, ``encoder``, ``dtype`` (write one with :func:`save_text_embed`).
  The loader checks the file's label names and template against the model's.
- :class:`OpenClipTextEncoder` — OpenAI CLIP ViT-B/32 through ``open_clip`` (optional extra, imported only
  when used), from a **local checkpoint file**. It never passes a pretrained tag, so it never downloads.

Contract (``TextEncoder``): ``encode(prompts: list[str]) -> Tensor [len(prompts), 512]``, fp32, un-normalised,
one row per prompt in the given order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor

DEFAULT_TEMPLATE = "a face image of {}"
TEXT_DIM = 512
# The released code prompts with these words (docs/models/ferformer.md D9); every other canonical name is its own word.
PROMPT_WORDS = {"anger": "angry"}
_META_KEYS = ("label_names", "template", "encoder", "dtype")

PathLike = Union[str, "os.PathLike[str]"]


@runtime_checkable
class TextEncoder(Protocol):
    """Anything with ``encode(prompts) -> Tensor [len(prompts), 512]`` (fp32, un-normalised)."""

    def encode(self, prompts: list[str]) -> Tensor: ...


def prompt_word(label: str) -> str:
    """The word the released prompts use for a canonical label (``anger`` → ``angry``)."""
    return PROMPT_WORDS.get(label, label)


def build_prompts(label_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per label, in the given order: ``template.format(word)``."""
    if "{}" not in template:
        raise ValueError(f"template: expected a format string with one '{{}}' for the label word, got {template!r}")
    return [template.format(prompt_word(name)) for name in label_names]


def save_text_embed(path: PathLike, text_embed: Tensor, label_names: Sequence[str],
                    template: str = DEFAULT_TEMPLATE, encoder: str = "unknown") -> None:
    """Write ``text_embed`` [C, 512] and its metadata to a safetensors file (the tensor-file encoder's format).

    ``label_names`` are the C labels in row order; ``encoder`` says what produced the rows (e.g.
    ``"openai ViT-B/32"``); the tensor's dtype is recorded before it is stored as fp32.
    """
    from safetensors.torch import save_file

    _check_embed("text_embed", text_embed, len(label_names))
    meta = {
        "label_names": json.dumps(list(label_names)),
        "template": template,
        "encoder": encoder,
        "dtype": str(text_embed.dtype).replace("torch.", ""),
    }
    save_file({"text_embed": text_embed.detach().float().contiguous().cpu()}, str(path), metadata=meta)


def _check_embed(name: str, t: Tensor, rows: int) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape != (rows, TEXT_DIM):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a tensor of shape ({rows}, {TEXT_DIM}), got {shape}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def _read_tensor_file(path: Path) -> tuple[Tensor, dict]:
    """(text_embed, metadata) from a safetensors file or a ``torch.save``'d dict."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if "text_embed" not in f.keys():
                raise ValueError(f"{path}: expected a tensor named 'text_embed', found {sorted(f.keys())}")
            tensor = f.get_tensor("text_embed")
        if "label_names" in meta:
            meta["label_names"] = json.loads(meta["label_names"])
        return tensor, meta
    blob = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "text_embed" not in blob:
        found = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: expected a dict with a 'text_embed' tensor, found {found}")
    meta = {k: blob[k] for k in _META_KEYS if k in blob}
    return blob["text_embed"], meta


class TensorFileTextEncoder:
    """Text features read from a file written by :func:`save_text_embed` (or a ``torch.save``'d dict with the
    same keys).

    ``encode(prompts)`` returns the stored rows when ``prompts`` are exactly the file's prompts
    (its template applied to its label names, in order); anything else is an error that shows both lists, so a
    file for another label order or template is never silently used.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"text_encoder: tensor file {str(self.path)!r} does not exist")
        embed, meta = _read_tensor_file(self.path)
        missing = [k for k in ("label_names", "template") if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: metadata lacks {missing}; write the file with "
                             f"fastfer.models.text_encoder.save_text_embed")
        self.label_names = tuple(meta["label_names"])
        self.template = str(meta["template"])
        self.encoder = str(meta.get("encoder", "unknown"))
        self.dtype = str(meta.get("dtype", "unknown"))
        _check_embed(f"{self.path}: text_embed", embed, len(self.label_names))
        self.text_embed = embed.float()

    @property
    def prompts(self) -> list[str]:
        return build_prompts(self.label_names, self.template)

    def check_labels(self, label_names: Sequence[str], template: Optional[str] = None) -> None:
        """Raise unless the file holds exactly these labels (in this order) and, if given, this template."""
        if tuple(label_names) != self.label_names:
            raise ValueError(f"{self.path}: label_names {list(self.label_names)} do not match the model's "
                             f"{list(label_names)} (same names in the same order required)")
        if template is not None and template != self.template:
            raise ValueError(f"{self.path}: template {self.template!r} does not match the model's {template!r}")

    def encode(self, prompts: list[str]) -> Tensor:
        if list(prompts) != self.prompts:
            raise ValueError(f"{self.path}: holds features for prompts {self.prompts}, asked for {list(prompts)}")
        return self.text_embed.clone()

    def __repr__(self) -> str:
        return f"TensorFileTextEncoder({str(self.path)!r}, labels={list(self.label_names)}, encoder={self.encoder!r})"


class OpenClipTextEncoder:
    """CLIP text tower through ``open_clip`` (``pip install open_clip_torch``), from a local checkpoint only.

    Args:
        checkpoint: path of a local open_clip / OpenAI CLIP state_dict (safetensors or ``.pt``/``.bin``).
            OpenAI's TorchScript ``ViT-B-32.pt`` should be converted once to a plain state_dict so that loading
            never unpickles code. Pretrained *tags* such as ``"openai"`` are refused: they would download.
        model_name: open_clip architecture; ``ViT-B-32-quickgelu`` because OpenAI trained with QuickGELU.
        device: where the tower runs while encoding.

    ``encode(prompts)`` tokenises with open_clip's bundled BPE (context 77) and returns ``encode_text`` output,
    fp32, eval mode, no gradients, un-normalised: [len(prompts), 512].
    """

    def __init__(self, checkpoint: PathLike, model_name: str = "ViT-B-32-quickgelu",
                 device: Union[str, torch.device] = "cpu"):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"text_encoder: open_clip checkpoint {str(checkpoint)!r} is not a local file; pass the path of a "
                f"downloaded CLIP ViT-B/32 state_dict (fastfer never downloads weights)")
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("text_encoder='open_clip:...' needs the optional package open_clip_torch "
                              "(pip install open_clip_torch), or pass a precomputed tensor file instead") from e
        self.path = path
        self.model_name = model_name
        self.device = torch.device(device)
        # A path (never a tag) as `pretrained`: open_clip loads the local file and cannot reach the network.
        self.model = open_clip.create_model(model_name, pretrained=str(path), device=self.device)
        self.model.eval().float()
        self.tokenizer = open_clip.get_tokenizer(model_name.replace("-quickgelu", ""))
        self.encoder = f"open_clip {model_name} ({path.name})"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        out = self.model.encode_text(tokens).float().cpu()
        _check_embed("open_clip encode_text output", out, len(prompts))
        return out

    def __repr__(self) -> str:
        return f"OpenClipTextEncoder({str(self.path)!r}, model_name={self.model_name!r})"


def make_text_encoder(spec: Union[None, PathLike, TextEncoder]) -> Optional[TextEncoder]:
    """Resolve the ``text_encoder`` argument of FER-former.

    Accepts None, an object with ``encode``, ``"open_clip:PATH"`` (CLIP through open_clip from a local file),
    or the path of a tensor file (``.safetensors`` / ``.pt``).
    """
    if spec is None:
        return None
    # Paths first: a str has an ``encode`` method too, so it would pass the protocol check.
    if isinstance(spec, (str, bytes, os.PathLike)):
        text = os.fsdecode(spec)
        if text.startswith("open_clip:"):
            return OpenClipTextEncoder(text[len("open_clip:"):])
        return TensorFileTextEncoder(text)
    if isinstance(spec, TextEncoder):
        return spec
    raise TypeError(f"text_encoder: expected None, a tensor-file path, 'open_clip:PATH' or an object with "
                    f"encode(prompts), got {type(spec).__name__}")


def encode_labels(encoder: TextEncoder, label_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Tensor:
    """Run ``encoder`` once on the prompts of ``label_names``; a tensor file is checked against the labels first.

    Returns the fp32 [C, 512] features, rows in ``label_names`` order.
    """
    if isinstance(encoder, TensorFileTextEncoder):
        encoder.check_labels(label_names, template)
    prompts = build_prompts(label_names, template)
    out = encoder.encode(prompts)
    _check_embed(f"{type(encoder).__name__}.encode output", out, len(prompts))
    return out.detach().float()
