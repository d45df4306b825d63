"""The canonical expression labels and every mapping into them.

One order for the whole library (AffectNet's; the 7-class sets use the first seven):
``neutral, happy, sad, surprise, fear, disgust, anger, contempt``. Readers map each dataset's native ids to
this order **by name**, checkpoints store their own ``label_names``, and model converters permute classifier
rows with :func:`permute_classifier_rows` (``W_canon[map[i]] = W_native[i]``).

The native orders of the datasets and of the released models are kept here as data (``NATIVE_ORDERS``), spelled
as their sources spell them; :func:`normalize_name` folds the spellings (case-insensitive).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")

# Spellings used by datasets and models, folded to the canonical word.
_ALIASES = {
    "angry": "anger",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
}

# Classes that are not expressions (FERPlus unknown / NF, AffectNet None / Uncertain / No-Face). They never map to
# a canonical index: their samples are dropped and counted.
NON_EXPRESSIONS: frozenset[str] = frozenset({"unknown", "nf", "none", "uncertain", "no-face"})

NATIVE_ORDERS: dict[str, tuple[str, ...]] = {
    # datasets (docs/datasets.md §2)
    "fer2013": ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"),
    "expw": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
    "rafdb": ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"),  # file labels 1..7
    "ferplus": ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF"),
    "affectnet": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
                  "None", "Uncertain", "No-Face"),
    "sfew": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),  # ImageFolder, alphabetical
    # models
    "hsemotion": ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
    "apvit": ("Anger", "Disgust", "Fear", "Sadness", "Happiness", "Surprise", "Neutral", "Contempt"),
    "fer_former": ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"),
    "conv_cut_rafdb": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "conv_cut_ferplus": ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "pyfeat": ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"),
}


class UnknownLabelError(ValueError):
    """A label name that is neither a canonical expression (after normalisation) nor a known non-expression."""


def normalize_name(name: str) -> str:
    """Fold a native label spelling to its canonical word (``"Happiness"`` → ``"happy"``).

    Non-expression names come back folded too (``"NF"`` → ``"nf"``); :func:`canonical_index` tells them apart.
    Raises ``UnknownLabelError`` for anything else.
    """
    if not isinstance(name, str):
        raise TypeError(f"label name: expected a str, got {type(name).__name__} ({name!r})")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in EXPRESSIONS or key in NON_EXPRESSIONS:
        return key
    raise UnknownLabelError(
        f"unknown label name {name!r}: expected one of {', '.join(EXPRESSIONS)} (or an alias: "
        f"{', '.join(sorted(_ALIASES))}; or a non-expression class: {', '.join(sorted(NON_EXPRESSIONS))})")


def label_names(num_classes: int) -> tuple[str, ...]:
    """The canonical names of a ``num_classes``-way label set (7: no contempt; 8: all)."""
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes: expected 7 or 8, got {num_classes!r}")
    return EXPRESSIONS[:num_classes]


def canonical_index(name: str, num_classes: int = 8) -> int | None:
    """Canonical index of a native name, or ``None`` when the class is dropped.

    Dropped: non-expression classes, and contempt in a 7-class set.
    """
    key = normalize_name(name)
    names = label_names(num_classes)
    return names.index(key) if key in names else None


def native_to_canonical(native_names: Sequence[str], num_classes: int = 8) -> tuple[int, ...]:
    """Map native id → canonical index (``-1`` = dropped) by name, for a whole native order.

    >>> native_to_canonical(NATIVE_ORDERS["fer2013"], 7)
    (6, 5, 4, 1, 2, 3, 0)
    """
    out = []
    for name in native_names:
        idx = canonical_index(name, num_classes)
        out.append(-1 if idx is None else idx)
    kept = [i for i in out if i >= 0]
    if len(kept) != len(set(kept)):
        raise ValueError(f"native_names {tuple(native_names)!r}: two names fold to the same canonical class")
    return tuple(out)


def order_map(source_names: Sequence[str], target_names: Sequence[str]) -> tuple[int, ...]:
    """``map[i]`` = position in ``target_names`` of ``source_names[i]`` (names compared after normalisation).

    Both orders must hold the same set of classes (a bijection); used to move classifier rows between orders.
    """
    src = [normalize_name(n) for n in source_names]
    dst = [normalize_name(n) for n in target_names]
    if len(set(src)) != len(src) or len(set(dst)) != len(dst) or sorted(src) != sorted(dst):
        raise ValueError(f"order_map: source_names {tuple(source_names)!r} and target_names "
                         f"{tuple(target_names)!r} must name the same classes, each once")
    return tuple(dst.index(n) for n in src)


def permute_rows(t: Tensor, mapping: Sequence[int]) -> Tensor:
    """Return ``out`` with ``out[mapping[i]] = t[i]`` along dim 0 (a classifier weight [C, D] or bias [C])."""
    if t.shape[0] != len(mapping):
        raise ValueError(f"permute_rows: expected a tensor with {len(mapping)} rows (len(mapping)), "
                         f"got shape {tuple(t.shape)}")
    if sorted(mapping) != list(range(len(mapping))):
        raise ValueError(f"permute_rows: mapping must be a permutation of 0..{len(mapping) - 1}, got {tuple(mapping)}")
    out = torch.empty_like(t)
    out[torch.as_tensor(list(mapping), dtype=torch.long, device=t.device)] = t
    return out


def permute_classifier_rows(weight: Tensor, bias: Tensor | None, native_names: Sequence[str],
                            target_names: Sequence[str] | None = None) -> tuple[Tensor, Tensor | None]:
    """Reorder a classifier from a model's native label order to ``target_names`` (default: canonical).

    ``weight``: [C, D], ``bias``: [C] or None, ``native_names``: the C names in the checkpoint's row order.
    Returns ``(W_canon, b_canon)`` with ``W_canon[map[i]] = W_native[i]``.
    """
    if target_names is None:
        target_names = label_names(len(native_names)) if len(native_names) in (7, 8) else EXPRESSIONS
    mapping = order_map(native_names, target_names)
    return permute_rows(weight, mapping), (None if bias is None else permute_rows(bias, mapping))

