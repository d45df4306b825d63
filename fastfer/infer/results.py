"""What :meth:`fastfer.infer.Predictor.predict` returns per image, and how unreadable items are reported.

Each image's result is a :class:`Faces` — a plain list of face dicts with two attributes: ``name`` (the path,
the caller's name, or ``images[i]``) and ``error`` (None; or, for an item that could not be decoded, the reason,
the list then being empty). Loops over faces keep working on failed items; ``[r for r in results if r.error]``
finds them.

``on_error="skip"`` (default): an unreadable item becomes such an error entry (with a RuntimeWarning naming it)
and every other item is still classified. ``on_error="raise"``: the first unreadable item raises its own error
(FileNotFoundError, :class:`fastfer.data.base.CorruptImageError`, TypeError, ValueError), after the items before
it were classified; those results ride on the exception as ``exc.results`` (and ``exc.index`` says which item
failed), so nothing already computed is lost.
"""
from __future__ import annotations

import warnings
from typing import Optional

ON_ERROR = ("skip", "raise")

# what decoding an input can raise: reported per item instead of stopping the whole call
ITEM_ERRORS = (OSError, ValueError, TypeError)


class Faces(list):
    """One image's faces (a list of dicts), with ``name`` and ``error`` (None, or why the item gave nothing)."""

    def __init__(self, faces=(), name: Optional[str] = None, error: Optional[str] = None):
        super().__init__(faces)
        self.name, self.error = name, error

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Faces(name={self.name!r}, error={self.error!r})"
        return f"Faces({list.__repr__(self)})"


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
    return on_error


def failed(name: str, exc: BaseException) -> Faces:
    """The error entry for an item that could not be decoded (and the warning that says so)."""
    message = str(exc) or type(exc).__name__
    if name not in message:
        message = f"{name}: {message}"
    warnings.warn(f"skipped an unreadable input: {message}", RuntimeWarning, stacklevel=4)
    return Faces([], name, message)
