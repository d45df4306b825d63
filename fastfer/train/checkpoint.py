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
(:func:`fastfer.models.weights.load_model`). Reading weights files and run folders lives there (one reader
for training, evaluation, inference and export); this module writes checkpoints and reads training state.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fastfer.models.weights import (CHECKPOINT_DIR, LATEST_FILE, STATE_FILE, WEIGHTS_FILE, read_metadata,
                                    read_state_dict, read_latest, resolve_checkpoint_dir, save_weights)
from fastfer.utils.errors import CheckpointError
from fastfer.utils.files import atomic_write, atomic_write_text, fsync_dir

__all__ = ["CHECKPOINT_DIR", "CheckpointError", "LATEST_FILE", "STATE_FILE", "WEIGHTS_FILE", "atomic_write",
           "atomic_write_text", "load_checkpoint", "load_state", "load_weights", "read_latest",
           "resolve_checkpoint_dir", "rng_state", "save_checkpoint", "save_state", "save_weights",
           "set_rng_state"]


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a weights file; a truncated or corrupt file raises :class:`CheckpointError`."""
    return read_state_dict(path), read_metadata(path)


def _require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what}: expected a file at {path}, found "
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
        fsync_dir(str(tmp))
        os.rename(tmp, root / name)
        fsync_dir(str(root))
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


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``(weights, metadata, state)`` of a checkpoint folder; the two files must come from the same save."""
    folder = Path(folder)
    weights, meta = load_weights(folder / WEIGHTS_FILE)
    state = load_state(folder / STATE_FILE)
    if meta.get("save_id") != state.get("save_id"):
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} (save {meta.get('save_id')}) and {STATE_FILE} (save "
                              f"{state.get('save_id')}) come from different saves")
    return weights, meta, state


def load_resumable(run: str | os.PathLike) -> tuple[Path, dict, dict, dict, Optional[str]]:
    """The newest intact checkpoint of a run folder (or of a ``checkpoints`` folder, or one ``ckpt-*`` folder).

    Returns ``(folder, weights, metadata, state, note)``. When the checkpoint ``latest`` names is missing,
    truncated or inconsistent, the newest older one that loads completely is used instead and ``note`` says which
    was skipped and why (the caller warns); when none loads, :class:`CheckpointError` names each one and why.
    """
    run = Path(run)
    try:
        folder = resolve_checkpoint_dir(run)
        return (folder, *load_checkpoint(folder), None)
    except CheckpointError as first:
        problem = str(first)
    root = run / CHECKPOINT_DIR if (run / CHECKPOINT_DIR).is_dir() else run
    latest = read_latest(root)
    candidates = sorted((p for p in root.glob("ckpt-*") if p.is_dir() and p.name != latest), reverse=True)
    tried = []
    for folder in candidates:
        try:
            loaded = load_checkpoint(folder)
        except (CheckpointError, OSError) as exc:
            tried.append(f"{folder.name}: {exc}")
            continue
        return (folder, *loaded, f"the latest checkpoint is unusable ({problem}); resuming from the newest intact "
                                 f"one, {folder}")
    detail = "; ".join(tried) if tried else "no older checkpoint"
    raise CheckpointError(f"resume: {problem}; and no intact older checkpoint in {root} ({detail})")
