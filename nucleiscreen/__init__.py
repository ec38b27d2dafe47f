"""nucleiscreen: nuclei segmentation and hit calling for genome-wide imaging screens."""

import pkgutil
from pathlib import Path

# The subpackages engine, kernels, trainer and bench are a checkout's top-level folders (pyproject.toml's
# package-dir). A checkout's own nucleiscreen/ has none of them (it comes first on sys.path when Python runs from the
# checkout's root: `python -m pytest`), so they are looked up in the other nucleiscreen folders on sys.path too: the
# editable install's tree of links, or an installed wheel. This folder and each subpackage's (their __init__.py) are
# the real folders, not the editable install's links to them: tracebacks name the files git names, and a module added
# since `pip install -e .` imports without a reinstall.
__path__ = [str(Path(__file__).resolve().parent), *pkgutil.extend_path(__path__, __name__)]
del pkgutil, Path

__version__ = "0.1.0"
