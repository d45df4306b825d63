"""The layering holds: ops → nn → models → data / viz → train / infer → cli (utils and labels below all). A module
never imports a higher layer — checked statically over every import (function-level ones included) and by
importing each package alone in a fresh interpreter (with fastfer's top-level ``__init__`` bypassed, since that
one imports the public API of several layers on purpose)."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastfer"
RANK = {"utils": 0, "labels": 0, "ops": 1, "nn": 2, "models": 3, "data": 4, "viz": 4, "train": 5, "infer": 5,
        "cli": 6, "__main__": 7}
PACKAGES = ["utils", "labels", "ops", "nn", "models", "data", "viz", "train", "infer", "cli"]


def _part(module: str) -> str:
    """fastfer.ops.reference → ops; fastfer.viz → viz."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "fastfer":  # from fastfer import ops
                found += [(node.lineno, f"fastfer.{a.name}") for a in node.names]
    return [(line, m) for line, m in found if m.startswith("fastfer.")]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts
        if parts == ("fastfer", "__init__"):
            continue  # the top-level package re-exports the public API of several layers
        yield ".".join(parts), path


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_part(m) for m, _ in _modules()} - set(RANK))
    assert not unknown, f"modules outside the layer map: {unknown} (add them to docs/design.md §1 and RANK)"


def test_no_module_imports_a_higher_layer_or_a_sibling_package_of_its_rank():
    bad = []
    for module, path in _modules():
        own = _part(module)
        for line, target in _imports(path):
            other = _part(target)
            if other == own or other not in RANK:
                continue
            if RANK[other] >= RANK[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {own} (layer {RANK[own]}) imports {target} "
                           f"(layer {RANK[other]})")
    assert not bad, "\n".join(bad)


PROBE = textwrap.dedent("""
    import importlib, sys, types
    root, name = sys.argv[1], sys.argv[2]
    stub = types.ModuleType("fastfer")  # bypass fastfer/__init__.py: import this package alone
    stub.__path__ = [root + "/fastfer"]
    sys.modules["fastfer"] = stub
    importlib.import_module("fastfer." + name)
    print(" ".join(sorted({m.split(".")[1] for m in sys.modules if m.startswith("fastfer.")})))
""")


@pytest.mark.parametrize("name", PACKAGES)
def test_importing_a_package_alone_loads_no_higher_layer(name):
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), name], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    higher = [p for p in loaded if p != name and RANK.get(p, -1) >= RANK[name]]
    assert not higher, f"import fastfer.{name} loaded {higher}"
