"""Checkpoints: safetensors weights that describe themselves, plus a resumable training state, written atomically.

Layout of a training run's checkpoints::

    <run>/checkpoints/latest                  text: the name of the newest complete checkpoint
    <run>/checkpoints/ckpt-000007-step-00000420/model.safetensors   weights + metadata (see below)
    <run>/checkpoints/ckpt-000007-step-00000420/state.pt            optimizer, scheduler, sampler position, RNG, epoch/step
    <run>/model.safetensors                   the final weights (what ``fastfer eval`` / predict take)

Atomicity: a single file is written to a temporary name in the same folder, flushed, fsynced and renamed over
the target (``os.replace``); a checkpoint folder is filled under a temporary name and renamed into place before
``latest`` is switched to it. A crash at any point leaves either the previous checkpoint or the new one, never a
partial file under a final name. Older checkpoints beyond ``keep`` are deleted only after the switch.

Weights metadata (safetensors header, key ``fastfer``, JSON): ``model`` (registered name), ``model_kwargs``,
``num_classes``, ``label_names``, ``preprocessing`` (``input_size``, ``mean``, ``std`` on the [0, 1] scale,
``interpolation``, ``alignment``), ``recipe``, ``data``, ``epoch``, ``step``, ``fastfer_version``, ``save_id``
and optional ``metrics``. That is enough to rebuild the model from the file alone
(:func:`build_model_from_checkpoint`).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
CHECKPOINT_DIR = "checkpoints"
META_KEY = "fastfer"


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, corrupt or inconsistent; the message names the file."""


# --- atomic single-file writes --------------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems / platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` to produce the file, then fsync and rename it to ``path``. On any error the
    temporary file is removed and ``path`` is untouched. Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


# --- weights (safetensors + metadata) ---------------------------------------------------------------------------

def _detached_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tensors sharing storage are cloned (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict[{k!r}]: expected a tensor, got {type(v).__name__}")
        t = v.detach().to("cpu")
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if (ptr is not None and ptr in seen) or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        if ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def save_weights(path: str | os.PathLike, state_dict: dict, metadata: dict) -> str:
    """Write ``state_dict`` as safetensors with ``metadata`` (JSON-serialisable) under the header key
    ``fastfer``, atomically. Returns the path."""
    from safetensors.torch import save_file

    tensors = _detached_state_dict(state_dict)
    header = {META_KEY: json.dumps(metadata, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``fastfer`` metadata of a weights file without reading the tensors ({} when absent)."""
    from safetensors import safe_open

    path = _require_file(path, "weights")
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


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a safetensors weights file; a truncated or corrupt file raises
    :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        return load_file(os.fspath(path)), meta
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the tensors ({e}); the file is truncated or corrupt") from None


def _require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected a file at {path}, found "
                                f"{'a directory' if os.path.isdir(path) else 'nothing'}")
    return path


# --- training state ------------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every RNG a training step may draw from, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | os.PathLike, state: dict) -> str:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict:
    path = _require_file(path, "training state")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the training state ({type(e).__name__}: {e}); the file is "
                              f"truncated or corrupt") from None


# --- checkpoint folders ----------------------------------------------------------------------------------------------

def _next_name(root: Path, step: int) -> str:
    """``ckpt-<n>-step-<step>``: n counts the saves of the run, so a name is never reused (the same step can be
    saved twice: mid-epoch, then again at the end of the epoch with the validation done)."""
    numbers = [int(m.group(1)) for p in root.glob("ckpt-*") if (m := re.match(r"ckpt-(\d+)-", p.name))]
    return f"ckpt-{max(numbers, default=0) + 1:06d}-step-{step:08d}"


def save_checkpoint(root: str | os.PathLike, step: int, weights: dict, metadata: dict, state: dict,
                    keep: int = 2) -> Path:
    """Write ``<root>/ckpt-<n>-step-<step>/{model.safetensors, state.pt}`` under a temporary folder name, rename it
    into place, point ``<root>/latest`` at it, then delete all but the ``keep`` newest. Returns the folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = _next_name(root, step)
    save_id = uuid.uuid4().hex
    metadata = {**metadata, "save_id": save_id, "step": step}
    state = {**state, "save_id": save_id, "step": step}
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS_FILE, weights, metadata)
        save_state(tmp / STATE_FILE, state)
        _fsync_dir(str(tmp))
        os.rename(tmp, root / name)
        _fsync_dir(str(root))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, name + "\n")
    _prune(root, keep)
    return root / name


def _prune(root: Path, keep: int) -> None:
    latest = read_latest(root)
    names = sorted(p.name for p in root.glob("ckpt-*") if p.is_dir())
    for old in names[:-max(keep, 1)]:
        if old != latest:
            shutil.rmtree(root / old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a crashed save of an earlier process
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def read_latest(root: str | os.PathLike) -> Optional[str]:
    p = Path(root) / LATEST_FILE
    if not p.is_file():
        return None
    name = p.read_text(encoding="utf-8").strip()
    return name or None


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A run folder, its ``checkpoints`` folder or one ``ckpt-*`` folder → the checkpoint folder to resume."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"resume: no such run or checkpoint folder {path}")
    if (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file():
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    name = read_latest(root)
    if name is None:
        raise FileNotFoundError(f"resume: {path} holds no checkpoint (expected {root / LATEST_FILE} naming a "
                                f"ckpt-* folder with {WEIGHTS_FILE} and {STATE_FILE})")
    folder = root / name
    for f in (WEIGHTS_FILE, STATE_FILE):
        if not (folder / f).is_file():
            raise CheckpointError(f"{folder / f}: missing; {root / LATEST_FILE} names {name} but the folder is "
                                  f"incomplete")
    return folder


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``(weights, metadata, state)`` of a checkpoint folder; the two files must come from the same save."""
    folder = Path(folder)
    weights, meta = load_weights(folder / WEIGHTS_FILE)
    state = load_state(folder / STATE_FILE)
    if meta.get("save_id") != state.get("save_id"):
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} (save {meta.get('save_id')}) and {STATE_FILE} (save "
                              f"{state.get('save_id')}) come from different saves")
    return weights, meta, state


# --- rebuilding a model from its weights file --------------------------------------------------------------------------

def find_weights(path: str | os.PathLike) -> Path:
    """A weights file, a checkpoint folder, or a run folder (its ``model.safetensors``, else the latest
    checkpoint) → the weights file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    if path.is_dir():
        return resolve_checkpoint_dir(path) / WEIGHTS_FILE
    raise FileNotFoundError(f"checkpoint: no such file or folder {path}")


MODEL_MODULES = ("fastfer.models", "fastfer.models.fer_former", "fastfer.models.conv_cut")


def register_models() -> None:
    """Import every fastfer model module so timm knows all of them (``apvit*``, ``fer_former*``, ``conv_cut*``)."""
    import importlib

    for name in MODEL_MODULES:
        importlib.import_module(name)


def build_model_from_checkpoint(path: str | os.PathLike, backend: Optional[str] = None,
                                device: Any = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a fastfer training run saved, from the weights file alone; returns ``(model, meta)``
    with the model in eval mode on ``device``."""
    register_models()
    from fastfer.models import create_model

    file = find_weights(path)
    state_dict, meta = load_weights(file)
    if "model" not in meta:
        raise CheckpointError(f"{file}: no fastfer metadata (model name, config); it was not written by fastfer "
                              f"training — load it with fastfer.models.create_model(name, weights=...)")
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs.update(num_classes=meta["num_classes"], label_names=meta.get("label_names"))
    if backend is not None:
        kwargs["backend"] = backend
    model = create_model(meta["model"], **kwargs)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match model {meta['model']!r} built with {kwargs}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), meta
