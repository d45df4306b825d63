"""Figures for training, evaluation and prediction: confusion matrix, APP/ATP overlay, probability bars, and
boxes + labels drawn on images.

matplotlib and OpenCV are imported inside the functions (``import fastfer.viz`` stays light). Figures are drawn
on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so the process-wide pyplot backend is never
touched and nothing opens a window. Every ``plot_*`` function writes one image file (PNG, or anything
matplotlib infers from the suffix) and returns its path.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # noqa: F821 — torch is only imported where needed


def _numpy(x, name: str) -> np.ndarray:
    """Tensor / array / nested list → numpy (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise TypeError(f"{name}: expected an array or tensor, got {type(x).__name__}") from exc


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --- confusion matrix -----------------------------------------------------------------------------------------


def plot_confusion_matrix(cm: np.ndarray, label_names: Sequence[str], path, normalize: bool = True,
                          title: Optional[str] = None) -> str:
    """Confusion matrix heat map: rows = true class, columns = predicted class.

    Args:
        cm: (C, C) counts, ``cm[i, j]`` = samples of class i predicted as j.
        label_names: C class names.
        path: output file.
        normalize: colour and print each row as a fraction of that class (recall on the diagonal) with the
            count underneath; rows without samples stay 0. False: colour and print raw counts.
        title: optional title; default "confusion matrix" plus the overall accuracy.
    """
    cm = _numpy(cm, "cm").astype(np.float64)
    names = [str(n) for n in label_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm: expected a square (C, C) matrix, got shape {cm.shape}")
    if len(names) != cm.shape[0]:
        raise ValueError(f"label_names: expected {cm.shape[0]} names (one per row of cm), got {len(names)}")
    if (cm < 0).any() or not np.isfinite(cm).all():
        raise ValueError("cm: expected finite non-negative counts")
    rows = cm.sum(1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    total = cm.sum()
    acc = np.trace(cm) / total if total > 0 else float("nan")

    n = len(names)
    side = max(4.0, 0.75 * n + 2.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix — accuracy {acc:.1%} of {int(total)}")
    small = n > 10
    for i in range(n):
        for j in range(n):
            value = shown[i, j]
            text = (f"{value:.0%}" if small else f"{value:.0%}\n{int(cm[i, j])}") if normalize else f"{int(cm[i, j])}"
            dark = value > 0.55 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if small else 9,
                    color="white" if dark else "black")
    return _save(fig, path)


# --- probabilities ----------------------------------------------------------------------------------------------


def plot_probabilities(probs: Union[Mapping[str, float], Sequence[float]], path, title: Optional[str] = None) -> str:
    """Horizontal bars of class probabilities; the top class is highlighted.

    Args:
        probs: ``{label: probability}`` in logit order, or a sequence (named ``class 0``, ``class 1`` …).
        path: output file.
        title: optional title; default "prediction: <top label> (p)".
    """
    if isinstance(probs, Mapping):
        names, values = [str(k) for k in probs], [float(v) for v in probs.values()]
    else:
        values = [float(v) for v in _numpy(probs, "probs").reshape(-1)]
        names = [f"class {i}" for i in range(len(values))]
    if not values:
        raise ValueError("probs: expected at least one class, got none")
    values = np.asarray(values)
    if not np.isfinite(values).all():
        raise ValueError(f"probs: expected finite values, got {values.tolist()}")
    top = int(values.argmax())
    fig = _figure(5.0, 0.4 * len(values) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(values))[::-1]  # first label at the top
    colors = ["tab:orange" if i == top else "tab:blue" for i in range(len(values))]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(1.0, float(values.max())) * 1.12)
    ax.set_xlabel("probability")
    for yi, v in zip(y, values):
        ax.text(v + 0.01, yi, f"{v:.2f}", va="center", fontsize=9)
    ax.set_title(title or f"prediction: {names[top]} ({values[top]:.2f})")
    return _save(fig, path)


# --- APP / ATP overlay ------------------------------------------------------------------------------------------


def _kept_mask(positions: np.ndarray, h: int, w: int) -> np.ndarray:
    """Grid positions (K,) → (h, w) bool mask."""
    mask = np.zeros(h * w, dtype=bool)
    positions = positions.astype(np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= h * w):
        raise ValueError(f"kept indices: expected grid positions in [0, {h * w}), got "
                         f"{positions.min()}..{positions.max()}")
    mask[positions] = True
    return mask.reshape(h, w)


def _upsample_mask(mask: np.ndarray, H: int, W: int) -> np.ndarray:
    """(h, w) grid → (H, W) by nearest cell (the patch a pixel falls into)."""
    h, w = mask.shape
    rows = np.minimum(np.arange(H) * h // H, h - 1)
    cols = np.minimum(np.arange(W) * w // W, w - 1)
    return mask[rows[:, None], cols[None, :]]


def _draw_kept(ax, image: np.ndarray, mask: np.ndarray, title: str, dropped: Optional[np.ndarray] = None) -> None:
    """Face with the dropped patches dimmed, a thin yellow outline on every kept patch and a red outline on the
    patches this stage dropped (``dropped``: (h, w) bool, kept by the previous stage but not by this one)."""
    H, W = image.shape[:2]
    big = _upsample_mask(mask, H, W)[..., None]
    ax.imshow(np.where(big, image, image * 0.25))
    h, w = mask.shape
    for r in range(h):
        for c in range(w):
            x0, y0 = c * W / w - 0.5, r * H / h - 0.5
            if mask[r, c]:
                ax.add_patch(_rect(x0, y0, W / w, H / h, (1.0, 0.85, 0.1, 0.7), 0.4))
            elif dropped is not None and dropped[r, c]:
                ax.add_patch(_rect(x0, y0, W / w, H / h, (1.0, 0.15, 0.1, 1.0), 1.0))
    ax.set_title(title, fontsize=9)


def _rect(x, y, w, h, colour, width):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, linewidth=width, edgecolor=colour)


def plot_app_overlay(images, score_maps, kept_index, path, kept_per_block: Optional[list] = None,
                     titles: Optional[Sequence[str]] = None, max_images: int = 8) -> str:
    """APViT's Attentive Patch Pooling (and Attentive Token Pooling) drawn over the faces.

    One row per image: the face; the APP score map (per-patch L1 activation) as a heat map over it; the
    patches APP kept (the others dimmed); then, for each block in ``kept_per_block`` that dropped tokens,
    the patches still alive after it, with the ones that block dropped outlined in red.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1] (un-normalised faces; values are clipped).
        score_maps: (B, h, w) APP scores on the trunk grid (``details["app_scores"]``).
        kept_index: (B, K) grid positions APP kept, row-major in h×w (``details["app_index"]``), or None.
        path: output file.
        kept_per_block: optional list, one per block, of (B, M_i) **grid positions** of the patch tokens that
            survive the block (``details["token_positions"]`` of ``APViT.forward_features(x,
            return_details=True)``); only blocks whose count drops are drawn.
        titles: optional per-image row titles (e.g. the predicted label).
        max_images: draw at most this many rows.
    """
    imgs = _numpy(images, "images").astype(np.float32)
    scores = _numpy(score_maps, "score_maps").astype(np.float32)
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got shape {imgs.shape}")
    if scores.ndim != 3 or scores.shape[0] != imgs.shape[0]:
        raise ValueError(f"score_maps: expected (B, h, w) with B={imgs.shape[0]}, got shape {scores.shape}")
    B, _, H, W = imgs.shape
    _, h, w = scores.shape
    kept = None if kept_index is None else _numpy(kept_index, "kept_index")
    if kept is not None and (kept.ndim != 2 or kept.shape[0] != B):
        raise ValueError(f"kept_index: expected (B, K) with B={B}, got shape {kept.shape}")
    blocks = []  # (block number, (B, M) positions) for the blocks that drop tokens
    previous = kept.shape[1] if kept is not None else h * w
    for i, positions in enumerate(kept_per_block or []):
        positions = _numpy(positions, f"kept_per_block[{i}]")
        if positions.ndim != 2 or positions.shape[0] != B:
            raise ValueError(f"kept_per_block[{i}]: expected (B, M) with B={B}, got shape {positions.shape}")
        if positions.shape[1] < previous:
            blocks.append((i, positions))
        previous = positions.shape[1]

    rows = min(B, max_images)
    cols = 2 + (kept is not None) + len(blocks)
    fig = _figure(2.1 * cols, 2.25 * rows + 0.3)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    faces = np.clip(imgs[:rows].transpose(0, 2, 3, 1), 0.0, 1.0)
    for r in range(rows):
        face = faces[r]
        ax = axes[r, 0]
        ax.imshow(face)
        ax.set_title(titles[r] if titles is not None else "face", fontsize=9)
        s = scores[r]
        span = float(s.max() - s.min())
        norm = (s - s.min()) / span if span > 0 else np.zeros_like(s)
        ax = axes[r, 1]
        ax.imshow(face)
        ax.imshow(norm, cmap="jet", alpha=0.45, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="bilinear")
        ax.set_title("APP score map", fontsize=9)
        c = 2
        previous = np.ones((h, w), dtype=bool)
        if kept is not None:
            previous = _kept_mask(kept[r], h, w)
            _draw_kept(axes[r, c], face, previous, f"APP kept {kept.shape[1]}/{h * w}")
            c += 1
        for i, positions in blocks:
            mask = _kept_mask(positions[r], h, w)
            _draw_kept(axes[r, c], face, mask, f"after block {i}: {positions.shape[1]} (red: dropped)",
                       dropped=previous & ~mask)
            previous = mask
            c += 1
    for ax in axes.reshape(-1):
        ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, path)


# --- boxes and labels on images (predict --annotate) ------------------------------------------------------------

_BOX_COLOUR = (255, 140, 0)  # RGB orange: readable on skin, sky and dark backgrounds


def annotate_image(image: np.ndarray, faces: Sequence[Mapping], colour=_BOX_COLOUR) -> np.ndarray:
    """Copy of an RGB uint8 image (H, W, 3) with each face's box, landmarks and ``label p`` drawn on it.

    ``faces``: dicts with ``box`` (x1, y1, x2, y2) and optionally ``landmarks`` [[x, y], …], ``label``,
    ``confidence`` / ``probs`` and ``track`` (as returned by :meth:`fastfer.infer.Predictor.predict` / ``stream``).
    """
    import cv2

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise TypeError(f"image: expected an RGB uint8 array (H, W, 3), got "
                        f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    out = np.ascontiguousarray(image.copy())
    H, W = out.shape[:2]
    thickness = max(1, round(min(H, W) / 300))
    font_scale = max(0.4, min(H, W) / 900)
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        for x, y in face.get("landmarks") or []:
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, (0, 220, 255), -1, cv2.LINE_AA)
        label = face.get("label")
        if label is None:
            continue
        p = face.get("confidence", (face.get("probs") or {}).get(label))  # "uncertain" has no probs entry
        text = f"{label} {p:.2f}" if p is not None else str(label)
        if face.get("track") is not None:  # stream / video faces: the track id keeps people apart
            text = f"#{face['track']} {text}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(y2 + th + 4, H - base)  # above the box, else below
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 4, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return out
