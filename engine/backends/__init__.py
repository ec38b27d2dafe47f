"""Inference backends behind one interface.

A backend is made from a model file and runs ``infer(batch)``: ``batch`` is N x 1 x H x W float32 (already
normalized and padded to the model's spatial multiple); the result is the N x H x W uint8 class map. Backends:
``onnxruntime`` (ONNX files; CPU by default, the CUDA provider when onnxruntime-gpu is installed), ``torch``
(training checkpoints; CUDA FP16 channels-last, or the CPU) and ``tensorrt`` (ONNX files built into cached plans;
unverified: no GPU with TensorRT has run it yet).
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


BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


def create_backend(name: str, model: ModelInfo, threads: int | None = None) -> Backend:
    """Make the backend ``name`` for ``model``; ``auto`` picks the fastest one available for the model file:
    torch for a training checkpoint (.pt); for ONNX, TensorRT when it and a GPU are present, else onnxruntime (its
    CUDA provider when onnxruntime-gpu is installed)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        from nucleiscreen.engine.backends import tensorrt

        name = "torch" if model.is_checkpoint else "tensorrt" if tensorrt.available() else "onnxruntime"
    if name == "tensorrt":
        from nucleiscreen.engine.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model, threads=threads)
    if name == "torch":
        from nucleiscreen.engine.backends.torch import TorchBackend

        return TorchBackend(model, threads=threads)
    if model.is_checkpoint:
        raise UserError(f"onnxruntime runs ONNX files, not the checkpoint {model.path.name}: export it with "
                        "`nucleiscreen export`, or use --backend torch")
    from nucleiscreen.engine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, threads=threads)
