"""Test-session setup.

Triton decides when a kernel module is imported whether its kernels are compiled or interpreted, so on a
machine without CUDA the interpreter is switched on here, before any test imports fastfer's kernels: the
Triton backend then runs on CPU tensors and is exercised, not skipped. FASTFER_POISON makes kernel
launchers fill their outputs with NaN / -1 first, so an element a kernel never writes fails the comparison.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FASTFER_POISON", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _pinned_backend(request):
    """``@pytest.mark.backend("torch")`` (on a test or a module) pins that op backend for the test — the way an
    entry point pins one (layers and models take no backend)."""
    marker = request.node.get_closest_marker("backend")
    if marker is None:
        yield
        return
    import fastfer

    with fastfer.use_backend(marker.args[0]):
        yield


@pytest.fixture
def device() -> torch.device:
    """The device the kernels run on in this session: CUDA when present, else CPU (Triton interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
