"""The package as editors, type checkers and pip see it: every module of the top-level folders imports under the one
``nucleiscreen`` namespace from the file at that path, and the kernels depend on nothing else of the project."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "trainer", "bench")


def _modules():
    """(module name, its file in the checkout) of every module of the package but ``__main__``: nucleiscreen/*.py,
    and the top-level folders as the subpackages nucleiscreen.engine, ... (pyproject.toml's package-dir)."""
    roots = [(ROOT / "nucleiscreen", ("nucleiscreen",)), *((ROOT / f, ("nucleiscreen", f)) for f in FOLDERS)]
    for base, prefix in roots:
        for path in sorted(base.rglob("*.py")):
            parts = prefix + path.relative_to(base).with_suffix("").parts
            if parts[-1] != "__main__":
                yield ".".join(p for p in parts if p != "__init__"), path


def test_every_module_imports_from_its_own_path():
    names = []
    for name, path in _modules():
        # nucleiscreen.engine.pipeline is engine/pipeline.py, or a copy of it installed from the wheel or the sdist
        file = Path(importlib.import_module(name).__file__)
        copy = ROOT not in file.resolve().parents and file.read_bytes() == path.read_bytes()
        assert file.samefile(path) or copy, name
        names.append(name)
    assert {"nucleiscreen.engine.pipeline", "nucleiscreen.kernels.instances", "nucleiscreen.trainer.train",
            "nucleiscreen.bench.host", "nucleiscreen.engine.backends.torch"} <= set(names)


# Layers, bottom up: errors; kernels (numba, nothing else of the project); simulate, network (the U-Net and its
# checkpoints); engine (reads model files, runs them); trainer (writes model files); cli, demo. Imports go down only.
FORBIDDEN = {
    "kernels": ("nucleiscreen.engine", "nucleiscreen.trainer", "nucleiscreen.network", "nucleiscreen.simulate",
                "nucleiscreen.cli", "nucleiscreen.demo", "nucleiscreen.bench", "nucleiscreen.errors"),
    "engine": ("nucleiscreen.trainer", "nucleiscreen.cli", "nucleiscreen.demo", "nucleiscreen.bench"),
    "nucleiscreen/network.py": ("nucleiscreen.engine", "nucleiscreen.trainer", "nucleiscreen.cli"),
    "trainer": ("nucleiscreen.cli", "nucleiscreen.demo", "nucleiscreen.bench"),
}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_imports_go_down_the_layers_only(layer):
    files = [ROOT / layer] if layer.endswith(".py") else sorted((ROOT / layer).rglob("*.py"))
    for path in files:
        bad = sorted(m for m in _imports(path) if m.startswith(FORBIDDEN[layer]))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
