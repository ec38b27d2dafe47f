"""Inference backends behind one interface.

A backend is made from a model file and runs ``infer(batch)``: ``batch`` is N x 1 x H x W float32 (already
normalized and padded to the model's spatial multiple); the result is the N x H x W uint8 class map. Backends:
``onnxruntime`` (CPU by default; CUDA/TensorRT providers when onnxruntime-gpu is installed). The native TensorRT and
torch backends come with the streaming engine.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError


class Backend(Protocol):
    name: str
    description: str
    preferred_batch: int  # the batch size used when none is asked for

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


BACKENDS = ("auto", "onnxruntime")


def create_backend(name: str, model: ModelInfo, threads: int | None = None) -> Backend:
    """Make the backend ``name`` for ``model``; ``auto`` picks the fastest one available."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    from nucleiscreen.engine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, threads=threads)
