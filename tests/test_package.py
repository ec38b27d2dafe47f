"""The package as editors, type checkers and pip see it: every module of the top-level folders imports under the one
``nucleiscreen`` namespace from the file at that path, and the kernels depend on nothing else of the project."""

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
