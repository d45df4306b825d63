"""`import fastfer` has no side effects: no fastfer kernels loaded, no compilation, no downloads, no CUDA."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import os, socket, sys, tempfile
    cache = tempfile.mkdtemp()
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(cache, "ext")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    os.environ["FASTFER_EXT_DIR"] = os.path.join(cache, "fastfer")
    def refuse(*args, **kwargs):
        raise AssertionError("network access during import")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    import torch
    import fastfer
    print("triton-kernels", any(m.startswith("fastfer.ops.backends.triton.") for m in sys.modules))
    print("cuda-initialised", torch.cuda.is_initialized())
    print("cache-files", sum(len(f) for _, _, f in os.walk(cache)))
""")


def test_import_has_no_side_effects():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    facts = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    # (torch._dynamo, which timm imports, may import the triton package itself; fastfer's kernels must not load)
    assert facts == {"triton-kernels": "False", "cuda-initialised": "False", "cache-files": "0"}
