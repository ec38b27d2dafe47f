from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent)]  # the real folder, not a link to it (nucleiscreen/__init__.py)
