"""Weights files: the one reader and writer of state dicts, and the one way to rebuild a model from a file.

Formats read: safetensors, and ``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)`` (no pickled
code ever runs). A ``{"state_dict": …}`` / ``{"model": …}`` wrapper and DataParallel's ``module.`` prefix are
removed. fastfer writes safetensors with a JSON header entry ``fastfer`` (:data:`META_KEY`) that describes the
model: ``model`` (registered name), ``model_kwargs``, ``num_classes``, ``label_names``, ``preprocessing``
(``input_size``, ``mean``, ``std`` on the [0, 1] scale, ``interpolation``, ``alignment``) and, from training,
``recipe``, ``data``, ``epoch``, ``step``, ``metrics``, ``save_id``. That is enough to rebuild the model from the
file alone (:func:`load_model`).

A training run folder (written by :mod:`fastfer.train`) holds ``model.safetensors`` and
``checkpoints/latest`` naming ``checkpoints/ckpt-<n>-step-<step>/`` with ``model.safetensors`` + ``state.pt``;
:func:`find_weights` accepts a file, a run folder or a checkpoint folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from fastfer.utils.errors import CheckpointError, CheckpointNotFoundError
from fastfer.utils.files import atomic_write

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
CHECKPOINT_DIR = "checkpoints"
META_KEY = "fastfer"


# --- reading ------------------------------------------------------------------------------------------------

def _require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise CheckpointError(f"{what} {path!r}: expected a file, found a directory")
        raise CheckpointNotFoundError(f"{what} {path!r}: no such file")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a weights file (safetensors or a weights-only ``.pth``), unwrapped (see the module doc).

    A missing, truncated, corrupt, pickled-code or non-tensor file raises :class:`CheckpointError` naming it.
    """
    path = _require_file(path, "checkpoint")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, forbidden global, bad header, text file ...
        raise CheckpointError(
            f"checkpoint {path!r}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            f"; the file may be truncated or corrupt, or not a weights-only PyTorch/safetensors file") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, name: str = "state_dict") -> dict[str, Tensor]:
    """``{'state_dict': sd, …}``, ``{'model': sd, …}`` or a bare ``sd`` → sd with a common ``module.`` stripped."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{name}: expected a state_dict (a non-empty dict of tensors), got "
                              f"{type(obj).__name__}{' (empty)' if isinstance(obj, dict) else ''}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{name}: expected tensors only, these entries are not tensors: "
                              f"{', '.join(map(str, bad[:8]))}")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``fastfer`` metadata of a weights file without reading its tensors ({} for files that have none,
    including every non-safetensors file)."""
    path = _require_file(path, "weights")
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file is truncated or "
                              f"corrupt") from None
    try:
        return json.loads(header[META_KEY]) if META_KEY in header else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the '{META_KEY}' metadata is not valid JSON ({e})") from None


# --- writing ------------------------------------------------------------------------------------------------

def _detached_state_dict(state_dict: dict) -> dict[str, Tensor]:
    """Contiguous CPU copies; tensors sharing storage are cloned (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state_dict[{k!r}]: expected a tensor, got {type(v).__name__}")
        t = v.detach().to("cpu")
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if (ptr is not None and ptr in seen) or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        if ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def save_weights(path: str | os.PathLike, state_dict: dict, metadata: Optional[dict] = None,
                 extra_header: Optional[dict[str, str]] = None) -> str:
    """Write ``state_dict`` as safetensors with ``metadata`` (JSON-serialisable) under the header key
    ``fastfer``, atomically (the folder must exist). Returns the path."""
    from safetensors.torch import save_file

    tensors = _detached_state_dict(state_dict)
    header = dict(extra_header or {})
    if metadata is not None:
        header[META_KEY] = json.dumps(metadata, sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header or None))


# --- run folders --------------------------------------------------------------------------------------------

def read_latest(root: str | os.PathLike) -> Optional[str]:
    """The checkpoint name ``<root>/latest`` points at, or None."""
    p = Path(root) / LATEST_FILE
    if not p.is_file():
        return None
    name = p.read_text(encoding="utf-8").strip()
    return name or None


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A run folder, its ``checkpoints`` folder or one ``ckpt-*`` folder → the checkpoint folder it names."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint: no such run or checkpoint folder {str(path)!r}")
    if (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file():
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    name = read_latest(root)
    if name is None:
        raise CheckpointError(f"checkpoint: {str(path)!r} holds no checkpoint (expected {root / LATEST_FILE} "
                              f"naming a ckpt-* folder with {WEIGHTS_FILE} and {STATE_FILE})")
    folder = root / name
    for f in (WEIGHTS_FILE, STATE_FILE):
        if not (folder / f).is_file():
            raise CheckpointError(f"{folder / f}: missing; {root / LATEST_FILE} names {name} but the folder is "
                                  f"incomplete")
    return folder


def find_weights(path: str | os.PathLike) -> Path:
    """A weights file, a checkpoint folder, or a run folder (its ``model.safetensors``, else the latest
    checkpoint's) → the weights file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    if path.is_dir():
        return resolve_checkpoint_dir(path) / WEIGHTS_FILE
    raise CheckpointNotFoundError(f"checkpoint: no such file or folder {str(path)!r}")


# --- rebuilding a model -------------------------------------------------------------------------------------

def check_finite(state: dict, where: str) -> None:
    """Refuse weights holding NaN/inf (a model built from them labels every face at random), naming the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
           and not (k.endswith("text_embed") and bool(v.isnan().all()))]  # FER-former's "not built yet" marker
    if bad:
        raise CheckpointError(f"checkpoint {where!r}: {len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:6])}"
                              f"{' …' if len(bad) > 6 else ''}; the weights are broken (a diverged run?)")


def check_fits(model: nn.Module, state: dict, where: str) -> None:
    """Raise :class:`CheckpointError` naming shape mismatches (class count first) and missing / unexpected keys."""
    own = model.state_dict()
    shape_errors = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if not (shape_errors or missing or unexpected):
        return
    lines = [f"checkpoint {where!r} does not fit the model:"]
    for k, got, want in shape_errors[:8]:
        lines.append(f"  {k}: checkpoint {list(got)}, model {list(want)}")
    if missing:
        lines.append(f"  missing in the checkpoint ({len(missing)}): {', '.join(missing[:6])}"
                     + (" …" if len(missing) > 6 else ""))
    if unexpected:
        lines.append(f"  not in the model ({len(unexpected)}): {', '.join(unexpected[:6])}"
                     + (" …" if len(unexpected) > 6 else ""))
    lines.append("  (a checkpoint of another model or another class count? pass the right model_name / "
                 "num_classes, or use the checkpoint's own metadata)")
    raise CheckpointError("\n".join(lines))


def _classifier_rows(state: dict, model_name: str) -> Optional[int]:
    """Classes of a state dict from the classifier weight the registered cfg names (``head`` → head.weight)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
        classifier = cfg.classifier if cfg is not None else "head"
    except Exception:  # unknown name: create_model reports it
        classifier = "head"
    for key in (f"{classifier}.weight", f"{classifier}.fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def load_model(source: str | os.PathLike, model_name: Optional[str] = None, num_classes: Optional[int] = None,
               label_names: Optional[Sequence[str]] = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a weights file, run folder or checkpoint folder; returns ``(model in eval mode, meta)``.

    A fastfer file names its model in its metadata; a plain state dict needs ``model_name`` (its class count
    is read from the classifier). ``model_name`` / ``num_classes`` given for a file that has metadata are
    checked against it. Every tensor must fit (strict), or :class:`CheckpointError` lists what does not.
    """
    from fastfer.models.registry import create_model

    path = os.fspath(find_weights(source))
    meta = read_metadata(path)
    saved_name = meta.get("model")
    if model_name and saved_name and model_name != saved_name:
        raise CheckpointError(f"checkpoint {path!r} holds a {saved_name!r} model, not {model_name!r} (--model / "
                              f"model_name); drop the option or pick the matching checkpoint")
    name = saved_name or model_name
    if not name:
        raise CheckpointError(f"checkpoint {path!r} has no fastfer metadata naming its model; pass model_name "
                              f"(--model)")
    state = read_state_dict(path)
    kwargs = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k not in ("backend", "pretrained")}
    saved_classes = kwargs.get("num_classes") or meta.get("num_classes") or _classifier_rows(state, name)
    if num_classes is not None and saved_classes is not None and int(saved_classes) != num_classes:
        raise CheckpointError(f"checkpoint {path!r} has {saved_classes} classes, not num_classes={num_classes}")
    if saved_classes is not None or num_classes is not None:
        kwargs["num_classes"] = int(saved_classes if saved_classes is not None else num_classes)
    names = label_names or meta.get("label_names")
    if names is not None:
        kwargs["label_names"] = tuple(names)
    check_finite(state, path)
    model = create_model(name, **kwargs)
    if callable(getattr(model, "adopt_state_dict", None)):  # parts that come with the weights (FER-former text head)
        model.adopt_state_dict(state)
    check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval(), {**meta, "model": name, "path": path}


def load_partial(model: nn.Module, source) -> list[str]:
    """Load a partial fastfer state_dict (path or dict) into ``model``; returns the model keys it left alone.

    Keys the model does not have and shape mismatches are errors (named); used to start from the converted
    IR-50 and ViT-S parts as the official training does.
    """
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else unwrap_state_dict(source)
    own = model.state_dict()
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise CheckpointError(f"load_partial: {len(unknown)} keys the model does not have: {', '.join(unknown[:8])}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"load_partial: {k}: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
    model.load_state_dict(sd, strict=False)
    return [k for k in own if k not in sd]
