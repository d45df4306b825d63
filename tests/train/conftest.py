"""Fixtures shared by the training tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def restore_threads():
    """``fastfer train`` sets the process's intra-op thread count; give the next test the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
