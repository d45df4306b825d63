"""Checkpoint files: atomic writes (no partial file after a crash), corrupt/truncated files named in the error,
checkpoint folders and the ``latest`` pointer, rebuilding a model from its weights file alone."""
import os

import pytest
import torch

from fastfer.train import checkpoint as ckpt

META = {"model": "apvit_tiny", "model_kwargs": {"img_size": 32, "patch_keep": 12, "depth": 2, "embed_dim": 32,
                                                "num_heads": 2, "keep_rates": [1.0, 0.9]},
        "num_classes": 7, "label_names": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
        "preprocessing": {"input_size": [3, 32, 32], "alignment": "none"}}


def _weights():
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}


def test_weights_round_trip_with_metadata(tmp_path):
    path = ckpt.save_weights(tmp_path / "w.safetensors", _weights(), {"model": "x", "label_names": ["a", "b"]})
    sd, meta = ckpt.load_weights(path)
    assert torch.equal(sd["a"], _weights()["a"]) and sd["b"].dtype == torch.bfloat16
    assert meta == {"model": "x", "label_names": ["a", "b"]}
    assert ckpt.read_metadata(path)["model"] == "x"


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path):
    base = torch.randn(4, 4)
    sd = {"w": base, "tied": base, "t": base.t()}
    loaded, _ = ckpt.load_weights(ckpt.save_weights(tmp_path / "s.safetensors", sd, {}))
    assert torch.equal(loaded["tied"], base) and torch.equal(loaded["t"], base.t())


def test_crash_during_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "model.safetensors"
    ckpt.save_weights(target, _weights(), {"version": 1})
    before = target.read_bytes()

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("simulated crash mid-write")

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, crash)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left behind


def test_crash_inside_save_checkpoint_keeps_latest(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, 10, _weights(), {"model": "m"}, {"epoch": 1})
    real_save_state = ckpt.save_state

    def crash_after_weights(path, state):
        raise OSError("disk full (simulated) after the weights were written")

    monkeypatch.setattr(ckpt, "save_state", crash_after_weights)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(root, 20, _weights(), {"model": "m"}, {"epoch": 2})
    monkeypatch.setattr(ckpt, "save_state", real_save_state)
    assert ckpt.read_latest(root) == first.name
    assert sorted(p.name for p in root.iterdir()) == [first.name, "latest"]  # the half-written folder is gone
    weights, meta, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint_dir(tmp_path / "checkpoints"))
    assert state["epoch"] == 1 and meta["step"] == 10


def test_checkpoint_folders_latest_and_pruning(tmp_path):
    root = tmp_path / "checkpoints"
    names = [ckpt.save_checkpoint(root, s, _weights(), {}, {"s": s}, keep=2).name for s in (5, 10, 10, 15)]
    assert len(set(names)) == 4  # the same step saved twice gets a new folder
    kept = sorted(p.name for p in root.glob("ckpt-*"))
    assert kept == names[-2:] and ckpt.read_latest(root) == names[-1]
    _, meta, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint_dir(tmp_path))  # run folder → latest
    assert state["s"] == 15 and meta["step"] == 15 and meta["save_id"] == state["save_id"]


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    path = ckpt.save_weights(tmp_path / "model.safetensors", _weights(), {"model": "m"})
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 9])
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        ckpt.load_weights(path)
    open(path, "wb").write(b"\x00" * 5)
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        ckpt.read_metadata(path)
    state = ckpt.save_state(tmp_path / "state.pt", {"x": torch.zeros(100)})
    open(state, "wb").write(open(state, "rb").read()[:50])
    with pytest.raises(ckpt.CheckpointError, match=r"state\.pt: cannot read the training state"):
        ckpt.load_state(state)
    with pytest.raises(FileNotFoundError, match="missing.safetensors.*no such file"):
        ckpt.load_weights(tmp_path / "missing.safetensors")


def test_mismatched_pair_and_missing_folder_are_reported(tmp_path):
    root = tmp_path / "checkpoints"
    a = ckpt.save_checkpoint(root, 1, _weights(), {}, {}, keep=5)
    b = ckpt.save_checkpoint(root, 2, _weights(), {}, {}, keep=5)
    os.replace(a / ckpt.STATE_FILE, b / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointError, match="come from different saves"):
        ckpt.load_checkpoint(b)
    ckpt.atomic_write_text(root / ckpt.LATEST_FILE, "ckpt-999999-step-00000009\n")
    with pytest.raises(ckpt.CheckpointError, match="missing; .*latest names ckpt-999999"):
        ckpt.resolve_checkpoint_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="holds no checkpoint"):
        ckpt.resolve_checkpoint_dir(tmp_path / "empty")


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


@pytest.mark.backend("torch")
def test_build_model_from_checkpoint_alone(tmp_path):
    import fastfer.models  # noqa: F401
    from fastfer.models import create_model

    torch.manual_seed(0)
    model = create_model("apvit_tiny", num_classes=7, **META["model_kwargs"]).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = ckpt.save_weights(tmp_path / "model.safetensors", model.state_dict(), META)
    from fastfer.models.weights import load_model

    rebuilt, meta = load_model(tmp_path)  # run folder → model.safetensors
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert list(rebuilt.label_names) == META["label_names"] and meta["preprocessing"]["input_size"] == [3, 32, 32]
    plain = ckpt.save_weights(tmp_path / "plain.safetensors", model.state_dict(), {})
    with pytest.raises(ckpt.CheckpointError, match="plain.safetensors' has no fastfer metadata"):
        load_model(plain)
    assert path.endswith("model.safetensors")
