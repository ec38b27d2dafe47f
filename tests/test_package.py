"""The package as editors, type checkers and pip see it: every module of the top-level folders imports under the one
``nucleiscreen`` namespace from the file at that path, and the kernels depend on nothing else of the project."""

import importlib
from pathlib import Path

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
