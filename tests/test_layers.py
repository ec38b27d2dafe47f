"""Imports go one way: the import-linter contracts of ``pyproject.toml`` (the project's layers, the engine's screen
analysis above its segmentation, the screen analysis in the order of its data), checked on the package's import graph.

grimp (import-linter's graph) finds a package's modules by walking the folder importlib gives for it. From the
checkout's root that is the checkout's own ``nucleiscreen/``, which does not hold ``engine/`` & co. (they are mapped
by ``package-dir``, docs/architecture.md "The layout"); from anywhere else it is the editable install's tree of links,
which holds every subpackage. So the graph is built in a child process started elsewhere, with the safe path (``-P``).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "trainer", "bench")

GRAPH = """
import json, grimp
print(json.dumps(sorted(grimp.build_graph("nucleiscreen", cache_dir=None).modules)))
"""
LINT = """
import sys
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))
"""


def _child(code: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-c", code, *args], cwd=tmp, capture_output=True, text=True,
                          timeout=300)


def test_the_graph_has_every_module_of_the_folders(tmp_path):
    # A layout that hid engine/ & co. from grimp would leave them out of every contract, which would then pass
    # without checking them.
    done = _child(GRAPH, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert "nucleiscreen.engine.screen.wells" in modules
    for folder in FOLDERS:
        names = {".".join(("nucleiscreen", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in (ROOT / folder).rglob("*.py")}
        assert names, folder
        assert not names - modules, (f"not in the import graph (a module added since `pip install -e .`? "
                                     f"install again): {sorted(names - modules)}")


def test_imports_keep_the_contracts(tmp_path):
    done = _child(LINT, str(ROOT / "pyproject.toml"), tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # the report: which import breaks which contract
