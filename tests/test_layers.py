"""Imports go one way: the import-linter contracts of ``pyproject.toml`` (the project's layers, the engine's screen
analysis above its segmentation, the screen analysis in the order of its data), checked on the package's import graph.
"""

import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "trainer", "bench")


def test_the_graph_has_every_module_of_the_folders():
    # import-linter checks grimp's graph, and grimp finds modules by walking the directory importlib gives for
    # `nucleiscreen` (following links). A layout that hid engine/ & co. from that walk would leave them out of every
    # contract, which would then pass without checking them.
    modules = grimp.build_graph("nucleiscreen", cache_dir=None).modules
    assert "nucleiscreen.engine.screen.wells" in modules
    for folder in FOLDERS:
        names = {".".join(("nucleiscreen", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in (ROOT / folder).rglob("*.py")}
        assert names, folder
        assert not names - modules, f"not in the import graph: {sorted(names - modules)}"


def test_imports_keep_the_contracts(monkeypatch):
    monkeypatch.setattr(sys, "path", sys.path.copy())  # lint_imports puts the working directory on it
    # the report (which import breaks which contract) is printed, and shown by pytest when this fails
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
