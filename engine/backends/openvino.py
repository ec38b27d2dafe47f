"""OpenVINO backend: Intel's CPU runtime on the same ONNX model file (the ``[openvino]`` extra, ``--backend openvino``).

OpenVINO reads the ONNX graph itself (the INT8 model's QDQ nodes become its own low-precision convolutions) and
compiles it for one input shape at a time: a screen has one frame size per plate, so each shape is compiled once
(a few hundred ms) and kept. One stream, ``threads`` inference threads (default: all cores), latency hint. Its class
maps equal onnxruntime's (tested). It is not ``auto``'s pick: on this project's 2-core AMD EPYC (AVX2, no VNNI) it was
no faster than onnxruntime on its own (the tiny INT8 model: 0.20 against 0.18 s per 1104^2 frame), and once it was
loaded, onnxruntime and the classic pipeline in the same process ran up to 1.5x slower; CPUs with VNNI or AMX, where
its INT8 kernels gain most, are where to measure it, each runtime in a process of its own (which is why the
benchmarks of ``bench/`` leave it out).
"""

from __future__ import annotations

import numpy as np

from nucleiscreen.engine.backends import SyncBackend
from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError

SHAPES_KEPT = 4  # compiled shapes kept (a plate's batch and its last, smaller one; a second plate size)


class OpenVinoBackend(SyncBackend):
    """Runs the model's ``image`` -> ``classes`` graph on OpenVINO's CPU plugin."""

    name = "openvino"
    preferred_batch = 1  # on a CPU a batch of large frames only adds cache misses, as on onnxruntime

    def __init__(self, model: ModelInfo, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise UserError("--backend openvino needs OpenVINO: pip install 'nucleiscreen[openvino]'") from None
        if model.is_checkpoint:
            raise UserError(f"openvino runs ONNX files, not the checkpoint {model.path.name}: export it with "
                            "`nucleiscreen export`")
        self.core = ov.Core()
        self.model = self.core.read_model(str(model.path))
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.dtype = np.float16 if model.input_dtype == "float16" else np.float32
        self.compiled: dict[tuple[int, ...], tuple] = {}
        self.description = f"openvino {ov.__version__} (CPU, {model.card.get('precision', 'fp32')})"

    def _request(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            if len(self.compiled) >= SHAPES_KEPT:
                self.compiled.pop(next(iter(self.compiled)))
            model = self.model.clone()
            model.reshape({"image": list(shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.compiled[shape] = (compiled.create_infer_request(), compiled.output("classes"))
        return self.compiled[shape]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.dtype)
        request, output = self._request(x.shape)
        return np.asarray(request.infer({"image": x})[output], dtype=np.uint8)
