"""nucleiscreen: nuclei segmentation and hit calling for genome-wide imaging screens."""

# Run from a checkout's root (`python -m pytest`, `python -m nucleiscreen`), this folder is imported before the
# installed package, and it has no engine/, kernels/, trainer/ or bench/ (pyproject.toml's package-dir maps them):
# those subpackages are then found in the other nucleiscreen folders on sys.path, the editable install's tree of
# links or an installed wheel.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
