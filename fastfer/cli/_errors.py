"""The CLI's one error path: library errors become one line on stderr and a distinct exit status."""
from __future__ import annotations

import errno
import sys
from typing import Callable

from fastfer.utils.errors import FastferError

EXIT_FAILED = 1  # the work itself failed (training diverged, an input could not be processed)
EXIT_USAGE = 2  # bad input: arguments, files, data, configuration


def say(command: str, message: str) -> None:
    print(f"fastfer {command}: {message}", file=sys.stderr, flush=True)


def run_reporting(command: str, func: Callable, args) -> int:
    """Run ``func(args)``; turn expected errors into one line (what, where, expected, actual) and a status."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        say(command, "interrupted")
        return 130
    except FastferError as exc:
        say(command, str(exc))
        return getattr(exc, "exit_status", EXIT_USAGE)
    except OSError as exc:
        say(command, _os_error(exc))
        return EXIT_USAGE
    except (ValueError, TypeError, ImportError, RuntimeError) as exc:
        say(command, str(exc) or type(exc).__name__)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError, ImportError)) else EXIT_FAILED


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename!r}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(exc.strerror) if exc.strerror and "no space" in str(exc.strerror) else \
            f"no space left on the device{' for' + where if where else ''}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied:{where} ({exc.strerror})"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder:{where}"
    return f"{exc.strerror or exc}{':' + where if where else ''}"
