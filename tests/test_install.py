"""The package as pip builds and installs it (docs/architecture.md, "The layout"): the wheel and the sdist, the
editable install of a clone made without symlinks, a type checker resolving ``nucleiscreen.engine`` in that clone,
and no ``engine``, ``kernels``, ``trainer`` or ``bench`` on sys.path. Builds and installs use what this environment
has (no build isolation, no dependencies, no index), into fresh venvs that see its packages: nothing is downloaded."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "trainer", "bench")
IMPORTS = ("import nucleiscreen.engine.pipeline, nucleiscreen.kernels.measure, nucleiscreen.trainer.config, "
           "nucleiscreen.bench.host")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(args, cwd: Path) -> str:
    """Run a command, fail with its output."""
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, args))} in {cwd}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def _venv(path: Path) -> Path:
    """A fresh venv that sees this environment's packages but no nucleiscreen, and its python. The packages come
    as plain paths in a .pth file, so this environment's own .pth files (its editable install) do not run there; a
    path that holds a nucleiscreen (the checkout, the editable install's link tree) is left out."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    python = path / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], path).strip()
    outside = [p for p in sys.path if p and Path(p).is_dir() and not Path(p, "nucleiscreen").exists()]
    Path(site, "_outside.pth").write_text("\n".join(outside) + "\n")
    return python


def _pip_install(python: Path, *args) -> None:
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *args],
         python.parents[1])


def _build(hook: str, source: Path, out: Path) -> Path:
    """An sdist or a wheel by setuptools' build hook (what `python -m build --no-isolation` calls)."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    return out / _run([sys.executable, "-c", code, out], source).split()[-1]


def _modules_found(python: Path, cwd: Path, names) -> dict[str, str | None]:
    """Where each module name is found by python run in cwd (None: nowhere)."""
    code = ("import importlib.util, json, sys\n"
            "specs = {n: importlib.util.find_spec(n) for n in sys.argv[1:]}\n"
            "print(json.dumps({n: s and str(s.origin or s.submodule_search_locations) for n, s in specs.items()}))")
    return json.loads(_run([python, "-c", code, *names], cwd))


def _package_files(root: Path) -> set[str]:
    """The package's modules where the wheel holds them: nucleiscreen/*.py, and engine/... as nucleiscreen/engine/..."""
    dirs = {"nucleiscreen": root / "nucleiscreen", **{f"nucleiscreen/{f}": root / f for f in FOLDERS}}
    return {f"{prefix}/{p.relative_to(d).as_posix()}" for prefix, d in dirs.items() for p in d.rglob("*.py")}


def test_no_folder_of_the_checkout_is_a_top_level_module(tmp_path):
    """`import engine` (kernels, trainer, bench: other projects' names on PyPI) does not find the checkout's folder."""
    found = _modules_found(Path(sys.executable), tmp_path, FOLDERS)
    assert not [n for n, where in found.items() if where and str(ROOT) in where], found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist of the checkout, unpacked, the wheel built from it (as `python -m build` does), and a fresh venv
    with the wheel installed: (sdist, unpacked folder, wheel, python)."""
    tmp = tmp_path_factory.mktemp("dist")
    sdist = _build("build_sdist", ROOT, tmp)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked = next((tmp / "unpacked").iterdir())
    wheel = _build("build_wheel", unpacked, tmp)
    python = _venv(tmp / "venv")
    _pip_install(python, wheel)
    return sdist, unpacked, wheel, python


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_data(built):
    _, _, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"nucleiscreen", "nucleiscreen-0.1.0.dist-info"}
    assert _package_files(ROOT) <= names  # a subpackage missing from pyproject.toml's packages is missing here
    assert {"nucleiscreen/models/unet-small.onnx", "nucleiscreen/models/unet-small-int8.onnx",
            "nucleiscreen/trainer/configs/unet-tiny.json"} <= names


@pytest.mark.slow
def test_the_installed_wheel_imports_and_runs(built, tmp_path):
    *_, python = built
    code = IMPORTS + ("\nfrom importlib.resources import files\n"
                      "print(nucleiscreen.engine.pipeline.__file__, nucleiscreen.bench.host.__file__)\n"
                      "assert (files('nucleiscreen') / 'models' / 'unet-small.onnx').is_file()")
    for file in _run([python, "-c", code], tmp_path).split():
        assert Path(file).is_relative_to(python.parents[1]), file  # the venv's copy, not the checkout
    assert "usage: nucleiscreen" in _run([python.parent / "nucleiscreen", "--help"], tmp_path)


@pytest.mark.slow
def test_the_sdist_holds_the_tests_and_they_pass_there(built):
    sdist, unpacked, _, python = built
    names = {n.split("/", 1)[-1] for n in tarfile.open(sdist).getnames()}
    assert {"tests/test_package.py", "tests/conftest.py", "engine/pipeline.py", "trainer/configs/unet-tiny.json",
            "nucleiscreen/models/unet-small.onnx", "docs/experiments/unet-small.json", "bench/gpu_check.sh"} <= names
    # run from the unpacked sdist as the README runs the tests, against the wheel installed from it
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_package.py",
                "tests/test_normalize.py", "tests/test_selection.py::test_the_shipped_training_configs_are_valid"],
               unpacked)
    assert " passed" in out


def test_the_checkout_has_no_symlinks():
    """A clone without symlink support (Windows, core.symlinks=false) gets every file as it is."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    links = [line for line in _run(["git", "ls-files", "-s"], ROOT).splitlines() if line.startswith("120000")]
    assert not links


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the checkout's HEAD made with core.symlinks=false, installed editable (`pip install -e .`, the
    README's command) in a fresh venv: (clone, python)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tmp = tmp_path_factory.mktemp("clone")
    _run(["git", "-c", "core.symlinks=false", "clone", "-q", ROOT, tmp / "repo"], tmp)
    python = _venv(tmp / "venv")
    _pip_install(python, "-e", tmp / "repo")
    return tmp / "repo", python


@pytest.mark.slow
def test_a_clone_without_symlinks_installs_editable(clone, tmp_path):
    repo, python = clone
    code = IMPORTS + ", nucleiscreen.cli\nprint(nucleiscreen.engine.pipeline.__file__, nucleiscreen.cli.__file__)"
    for cwd in (tmp_path, repo):  # elsewhere, and from its root, where its nucleiscreen/ comes first on sys.path
        # the files git names (and tracebacks), not the editable install's links to them
        files = _run([python, "-c", code], cwd).split()[-2:]
        assert files == [str(repo / "engine" / "pipeline.py"), str(repo / "nucleiscreen" / "cli.py")]
    assert "usage: nucleiscreen" in _run([python.parent / "nucleiscreen", "--help"], tmp_path)
    (repo / "engine" / "added.py").write_text("")  # a module added since the install imports without a reinstall
    _run([python, "-c", "import nucleiscreen.engine.added"], tmp_path)
    found = _modules_found(python, tmp_path, FOLDERS)
    assert not any(found.values()), found


@pytest.mark.slow
def test_a_type_checker_resolves_the_package_in_the_clone(clone):
    """What an editor's go-to-definition needs: basedpyright (pyright, its node from PyPI) resolves
    nucleiscreen.engine.run in a plain checkout with the editable install, to the file through its link."""
    pytest.importorskip("basedpyright", reason="the dev extra has basedpyright")
    repo, python = clone
    (repo / "probe.py").write_text("from nucleiscreen.engine.run import segment\n"
                                   "from nucleiscreen.kernels.measure import object_schema\n\n"
                                   "reveal_type(segment)\nreveal_type(object_schema)\n")
    r = subprocess.run([sys.executable, "-m", "basedpyright", "--pythonpath", python, "--outputjson", "probe.py"],
                       cwd=repo, env=ENV, capture_output=True, text=True)
    diagnostics = json.loads(r.stdout)["generalDiagnostics"]
    assert not [d for d in diagnostics if d["severity"] == "error"], diagnostics
    revealed = [d["message"] for d in diagnostics if "Type of" in d["message"]]
    assert len(revealed) == 2 and not [m for m in revealed if "Unknown" in m], revealed
