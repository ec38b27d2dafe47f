"""The package as editors, type checkers and pip see it: every module of the top-level folders imports under the one
``nucleiscreen`` namespace from the file at that path, and the kernels depend on nothing else of the project."""

import ast
import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "trainer", "bench")


def _modules():
    """(module name, the file an editor resolves it to) of every module of the package but ``__main__``."""
    files = [Path(d) / f for d, _, fs in os.walk(ROOT / "nucleiscreen", followlinks=True) for f in fs]
    for path in sorted(p for p in files if p.suffix == ".py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__main__":
            yield ".".join(p for p in parts if p != "__init__"), path


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_is_a_link_inside_the_package(folder):
    link = ROOT / "nucleiscreen" / folder
    assert link.is_symlink() and link.resolve() == ROOT / folder


def test_every_module_imports_from_its_own_path():
    names = []
    for name, path in _modules():
        # nucleiscreen.engine.pipeline is nucleiscreen/engine/pipeline.py (= engine/pipeline.py through the link)
        assert Path(importlib.import_module(name).__file__) == path, name
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
