"""Training, evaluation and export of the segmentation network (PyTorch; install the ``[train]`` extra).

``metrics`` and ``evaluate`` need no torch, so ``nucleiscreen evaluate`` works on a runtime-only install.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent)]  # the real folder, not a link to it (nucleiscreen/__init__.py)

from nucleiscreen.errors import UserError

FINETUNE_STEPS = 300  # train --finetune: steps on a user's annotated frames (docs/training.md)


def require_torch() -> None:
    """Fail with one clear line when the [train] extra is missing."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise UserError(f"this command needs the training extra ({exc.name} is missing): "
                        "pip install 'nucleiscreen[train]'") from None
