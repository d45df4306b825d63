"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, renamed over the target.

A crash (or an error such as a full disk) at any point leaves either the old file or the new one under the
final name, never a partial file, and the temporary file is removed.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from typing import Callable

LOW_SPACE = 1 << 20  # bytes left on a filesystem below which a failed write is reported as a full disk


def fsync_dir(path: str) -> None:
    """fsync a folder so a rename inside it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str | os.PathLike) -> str:
    """A unique hidden name next to ``path`` (same folder: the final rename stays on one filesystem)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` to produce the file, then fsync and rename it to ``path``. On any error the
    temporary file is removed and ``path`` is untouched. Missing parent folders are created. Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, Exception) and disk_full(folder, exc):
            raise no_space(path) from exc
        raise
    fsync_dir(folder)
    return path


def disk_full(folder: str, exc: BaseException) -> bool:
    """Whether a failed write is a full disk: ENOSPC, or a writer's own error (torch.save says "enforce fail …
    unexpected pos", safetensors "No space left") on a filesystem with (almost) no space left."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE
    except OSError:
        return False


def no_space(path: str) -> OSError:
    """The error a full disk gives, naming the file whose write failed (the old file, if any, is unchanged)."""
    return OSError(errno.ENOSPC, f"no space left on the device writing {path} (any existing file there is "
                                 f"unchanged)", path)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)
