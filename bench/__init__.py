"""fastfer benchmarks (pytest-benchmark); see bench/README.md. A package so ``python -m bench.report`` works."""
