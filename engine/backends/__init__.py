"""Inference backends behind one interface.

A backend is made from a model file and runs ``infer(batch)``: ``batch`` is N x 1 x H x W float32 (already
normalized and padded to the model's spatial multiple); the result is the N x H x W uint8 class map. Backends:
``onnxruntime`` (ONNX files; CPU by default, the CUDA provider when onnxruntime-gpu is installed) and ``torch``
(training checkpoints; CUDA FP16 channels-last, or the CPU). The native TensorRT backend is not written yet.
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


BACKENDS = ("auto", "onnxruntime", "torch")


def create_backend(name: str, model: ModelInfo, threads: int | None = None) -> Backend:
    """Make the backend ``name`` for ``model``; ``auto`` picks the fastest one available for the model file:
    torch for a training checkpoint (.pt), onnxruntime (CUDA provider when onnxruntime-gpu is installed) for ONNX."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "torch" if model.is_checkpoint else "onnxruntime"
    if name == "torch":
        from nucleiscreen.engine.backends.torch import TorchBackend

        return TorchBackend(model, threads=threads)
    if model.is_checkpoint:
        raise UserError(f"onnxruntime runs ONNX files, not the checkpoint {model.path.name}: export it with "
                        "`nucleiscreen export`, or use --backend torch")
    from nucleiscreen.engine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, threads=threads)
