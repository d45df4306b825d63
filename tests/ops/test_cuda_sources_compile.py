"""kernels/*.cu and the CUDA bindings compile for Hopper (sm_90) with nvcc, even without a GPU, so CUDA code
that does not compile cannot land (tools/check_cuda_compile.py does the work)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_cuda_sources_compile_for_sm90():
    proc = subprocess.run([sys.executable, str(ROOT / "tools/check_cuda_compile.py"), "--require-nvcc"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
