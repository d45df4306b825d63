"""Reading dataset label files as their authors write them: UTF-8 with or without a byte-order mark, LF or CRLF
line ends; a byte that is not UTF-8 and a number that does not parse are errors naming the file, the line and
the column. Readers use these instead of ``open(...)`` and ``int(...)``."""
from __future__ import annotations

import codecs
import os
from pathlib import Path

from fastfer.data.base import DatasetFormatError


def read_text(path: str | os.PathLike, what: str = "label file") -> str:
    """The whole file decoded as UTF-8 (a leading BOM dropped, CRLF → LF). Permission and missing-file errors
    keep the path (OSError.filename); a non-UTF-8 byte is a :class:`DatasetFormatError` at its line and column."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DatasetFormatError(path, line, f"byte 0x{data[exc.start]:02x} at column {column} is not UTF-8 "
                                             f"(the {what} must be UTF-8; re-save it as UTF-8, e.g. "
                                             f"`iconv -f latin1 -t utf-8`)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | os.PathLike, what: str = "label file") -> list[tuple[int, str]]:
    """``[(line number, line without its end)]`` of a UTF-8 text file (see :func:`read_text`)."""
    return list(enumerate(read_text(path, what).split("\n"), 1))


def parse_int(text: str, path: str | os.PathLike, line: int, what: str, low: int | None = None,
              high: int | None = None, column: int | None = None) -> int:
    """An ASCII decimal integer in ``low..high``; anything else (``²``, ``3.5``, ``-``) names file, line, column."""
    value = text.strip()
    body = value[1:] if value.startswith("-") else value
    where = f" (column {column})" if column is not None else ""
    if low is not None and high is not None:
        rng = f"{what} in {low}..{high}"
    elif low is not None:
        rng = f"{what} ≥ {low}"
    else:
        rng = f"{what} (an integer)"
    if not (body.isascii() and body.isdigit()) or (low is not None and int(value) < low) or (
            high is not None and int(value) > high):
        raise DatasetFormatError(path, line, f"expected {rng}, got {value!r}{where}")
    return int(value)
