"""The fastfer.nn / fastfer.patch examples run end to end (tiny settings) and do what they print."""
import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_model_example_trains(capsys):
    final_loss = _load("custom_model").main(["--steps", "12", "--batch", "16", "--backend", "torch"])
    out = capsys.readouterr().out
    first_loss = float(out.split("loss ")[1].split()[0])
    assert math.isfinite(final_loss) and final_loss < first_loss
    assert "block 3: 28 tokens leave" in out


def test_patch_timm_vit_example(capsys):
    result = _load("patch_timm_vit").main(["--img-size", "32", "--batch", "2", "--repeats", "1", "--backend", "torch"])
    out = capsys.readouterr().out
    assert set(result) == {"timm", "patched", "patched+pool0.7"} and all(v > 0 for v in result.values())
    assert "unpatch restored the original outputs exactly: True" in out
    diff = float(out.split("max |logits(patched) - logits(timm)| = ")[1].split()[0])
    assert diff < 1e-4
