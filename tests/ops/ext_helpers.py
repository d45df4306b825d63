"""Shared setup of the extension tests: the built extension, or a skip that says why it cannot be built.

A build that can start but fails is an error, not a skip: C++ that does not compile must fail the suite.
"""
from __future__ import annotations

import pytest

from fastfer.ops import _ext


def require_extension(kind: str):
    """The loaded ``kind`` extension module, JIT-built into the cache on first use (about a minute)."""
    if not _ext.ready(kind):
        reasons = _ext.prerequisites(kind)
        if reasons:
            pytest.skip(f"the {kind} extension cannot be built here: " + "; ".join(reasons))
    return _ext.load(kind)
