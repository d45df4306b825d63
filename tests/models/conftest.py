"""Shared fixtures for the model tests.

The paper-size APViT (65 M parameters) is built, randomised and run once per session, together with the
official-forward transcription on the same weights; several tests read from it.
"""
import pytest
import torch

import fastfer

from tests.models.official_apvit import official_forward, randomize_, to_official


@pytest.fixture
def one_intra_op_thread():
    """Run a CPU-heavy test on one intra-op thread: on the shared 2-core machine, OpenMP barriers under
    oversubscription made each op ~30× slower (measured: apvit_tiny B=2 forward 1.9 s with 2 threads, 0.07 s
    with 1, load average ≈ 12). Opt in with ``pytestmark = pytest.mark.usefixtures("one_intra_op_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def paper_case():
    """Random-weight paper APViT (torch backend, eval), a B=2 input, its outputs and the transcription's."""
    import timm

    import fastfer.models  # noqa: F401  (registers the models)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = randomize_(timm.create_model("apvit")).eval()
        x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
        with torch.no_grad(), fastfer.use_backend("torch"):
            tokens, details = model.forward_features(x, return_details=True)
            logits = model.forward_head(tokens)
            official = to_official(model.state_dict())
            ref = official_forward(official, x)
    finally:
        torch.set_num_threads(threads)
    return dict(model=model, x=x, tokens=tokens, details=details, logits=logits, official=official, ref=ref)
