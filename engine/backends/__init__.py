"""Inference backends behind one interface, the ``Backend`` protocol.

A backend is made from a model file and turns a batch of network inputs into class maps. Backends: ``onnxruntime``
(ONNX files; CPU by default, the CUDA provider when onnxruntime-gpu is installed), ``torch`` (ONNX files and training
checkpoints; CUDA FP16 channels-last, or the CPU), ``tensorrt`` (ONNX files built into cached plans; unverified: no
GPU with TensorRT has run it yet) and ``openvino`` (ONNX files on Intel's CPU runtime, the ``[openvino]`` extra).
``SyncBackend`` gives the synchronous ones the protocol's asynchronous and raw-input parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError


class Backend(Protocol):
    """What the engine asks of an inference backend; every capability is declared here, none is probed for.

    Attributes
    ----------
    name : str
        ``onnxruntime``, ``openvino``, ``torch`` or ``tensorrt``.
    description : str
        One line for the console and the manifest: runtime, version, device, precision.
    preferred_batch : int
        The batch size used when none is asked for (1 on a CPU, 16 on a GPU).
    device_type : str
        ``cpu`` or ``cuda``: where the network runs.
    asynchronous : bool
        Whether a submitted batch (``submit``, or ``submit_raw``) runs while the caller goes on (the engine collects
        a batch only after submitting the next, so it prepares and post-processes meanwhile).
    raw_input : bool
        Whether ``submit_raw`` takes raw uint8/uint16 frames and normalizes and pads them on the device.
    """

    name: str
    description: str
    preferred_batch: int
    device_type: str
    asynchronous: bool
    raw_input: bool

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class maps (N x H x W uint8: 0 background, 1 interior, 2 boundary) of a batch N x 1 x H x W of normalized
        frames (float32, or float16 for an FP16 model), padded to the model's spatial multiple; waits for them."""
        ...

    def submit(self, batch: np.ndarray) -> object:
        """Start ``infer`` on a batch; a token for ``collect``. Returns at once where ``asynchronous``."""
        ...

    def collect(self, token: object) -> np.ndarray:
        """The class maps of a submitted batch (waits for them)."""
        ...

    def submit_raw(self, frames: Sequence[np.ndarray]) -> object:
        """Start the class maps of same-shape raw uint8/uint16 frames (unpadded, not normalized: the backend does
        both as ``kernels/normalize.py`` does); only where ``raw_input``."""
        ...

    def collect_raw(self, token: object) -> np.ndarray:
        """The class maps (N x H x W) of a ``submit_raw`` batch."""
        ...


class SyncBackend:
    """The parts of ``Backend`` a synchronous, normalized-input-only backend shares: ``submit`` computes at once and
    its token is the result; no raw input."""

    device_type = "cpu"
    asynchronous = False
    raw_input = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def submit(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def collect(self, token: np.ndarray) -> np.ndarray:
        return token

    def submit_raw(self, frames: Sequence[np.ndarray]) -> object:
        raise NotImplementedError(f"the {self.name} backend takes normalized frames only (raw_input is False)")

    def collect_raw(self, token: object) -> np.ndarray:
        raise NotImplementedError(f"the {self.name} backend takes normalized frames only (raw_input is False)")


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
