"""The typed errors fastfer raises. Each message says what, where, what was expected and what came; the CLI
turns any :class:`FastferError` into one line without parsing it."""
from __future__ import annotations


class FastferError(Exception):
    """Base of every error fastfer raises on purpose (bad input, unreadable file, impossible request)."""


class CheckpointError(FastferError, ValueError):
    """A weights or checkpoint file that is missing, truncated, corrupt, or does not fit the model; the message
    names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file or run folder does not exist."""
