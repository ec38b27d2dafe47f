"""Inference backends behind one interface.

A backend is made from a model file and runs ``infer(batch)``: ``batch`` is N x 1 x H x W float32 (already
normalized and padded to the model's spatial multiple); the result is the N x H x W uint8 class map. Backends:
``onnxruntime`` (ONNX files; CPU by default, the CUDA provider when onnxruntime-gpu is installed), ``torch`` (ONNX
files and training checkpoints; CUDA FP16 channels-last, or the CPU) and ``tensorrt`` (ONNX files built into cached
plans; unverified: no GPU with TensorRT has run it yet) and ``openvino`` (ONNX files on Intel's CPU runtime, the
``[openvino]`` extra). A backend with ``raw_input`` (torch) also takes raw integer
frames (``submit_raw``/``collect_raw``) and normalizes and pads them itself, on its device.
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


BACKENDS = ("auto", "onnxruntime", "openvino", "torch", "tensorrt")


def create_backend(name: str, model: ModelInfo, threads: int | None = None) -> Backend:
    """Make the backend ``name`` for ``model``; ``auto`` is ``auto_backend``'s pick."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = auto_backend(model)
    if name == "tensorrt":
        from nucleiscreen.engine.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model, threads=threads)
    if name == "torch":
        from nucleiscreen.engine.backends.torch import TorchBackend

        return TorchBackend(model, threads=threads)
    if name == "openvino":
        from nucleiscreen.engine.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(model, threads=threads)
    if model.is_checkpoint:
        raise UserError(f"onnxruntime runs ONNX files, not the checkpoint {model.path.name}: export it with "
                        "`nucleiscreen export`, or use --backend torch")
    from nucleiscreen.engine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, threads=threads)


def auto_backend(model: ModelInfo) -> str:
    """The fastest backend available here for the model file: torch for a training checkpoint (.pt); for ONNX,
    TensorRT when it and a GPU are present, then onnxruntime's CUDA provider (onnxruntime-gpu), then torch on CUDA,
    then onnxruntime on the CPU (OpenVINO only when asked for: see ``backends/openvino.py``)."""
    if model.is_checkpoint:
        return "torch"
    from nucleiscreen.engine.backends import tensorrt

    if tensorrt.available():
        return "tensorrt"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnxruntime"
    import importlib.util

    if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnx") is not None:
        import torch

        if torch.cuda.is_available():
            return "torch"
    return "onnxruntime"


CPU_MODEL = "unet-small-int8"  # what --backend auto runs on a machine without a GPU (docs/benchmarks.md)


def auto_model(backend: str) -> ModelInfo:
    """The shipped model for ``--backend auto`` when no model is given: the INT8 variant where the pick is onnxruntime
    on the CPU (the same F1 within 0.002 on the lab's validation frames, ~0.65x the time), else the FP32 one."""
    from nucleiscreen.engine.model import load_model_info

    info = load_model_info()
    if backend == "auto" and auto_backend(info) == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return load_model_info(CPU_MODEL)
    return info
