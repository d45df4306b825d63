"""Build script.

The package itself is pure Python and declared in pyproject.toml. This file exists so that the optional
C++/CUDA extension (csrc/, kernels/) can be built ahead of time with
``FASTFER_BUILD_EXT=1 pip install -e . --no-build-isolation``; without that variable nothing is compiled at
install time and the extension is JIT-built on first use instead (see fastfer/ops/_ext.py).
"""
from setuptools import setup

setup()
