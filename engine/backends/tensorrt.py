"""TensorRT backend (native): build or load a plan for the model's ONNX file, run it with ``execute_async_v3``.

UNVERIFIED: written against the TensorRT 10/11 Python API and pycuda, but no machine of this project has run it yet
(no GPU with TensorRT was available); its tests skip where TensorRT or a GPU is missing.

Precision comes from the ONNX file: TensorRT 10.12+ builds strongly typed networks and TensorRT 11 removed the FP16
builder flag, so the FP16 variant of the model (``nucleiscreen export --fp16``) gives an FP16 engine. The plan is
built for one padded frame size with an optimization profile over batch 1..``max_batch`` and cached on disk under a
key of model hash, GPU name, TensorRT version and frame size (a plan only runs on the GPU model and TensorRT version
that built it); a timing cache beside it makes rebuilds fast. The GPU's primary CUDA context is made current only for
the duration of each call (pushed and popped), so the backend may be used from any one thread at a time and leaves no
context current behind it. Two execution slots, each with its own CUDA stream, pinned host buffers and device
buffers, let the copy of one batch overlap the compute of the other: ``submit`` enqueues a batch and returns at once,
``collect`` waits for it; ``infer`` is the two in a row.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError

INPUT, OUTPUT = "image", "classes"


def cache_dir() -> Path:
    """Where plans and timing caches live: $NUCLEISCREEN_CACHE/tensorrt, else ~/.cache/nucleiscreen/tensorrt."""
    root = os.environ.get("NUCLEISCREEN_CACHE") or Path.home() / ".cache" / "nucleiscreen"
    return Path(root) / "tensorrt"


def available() -> bool:
    """TensorRT and pycuda import, and a CUDA device is present."""
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # ImportError, or pycuda's own error types when no driver/device is present
        return False


def plan_key(model: ModelInfo, gpu_name: str, trt_version: str, height: int, width: int, max_batch: int) -> str:
    text = f"{model.sha256}|{gpu_name}|{trt_version}|{height}x{width}|b{max_batch}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def build_plan(onnx_path: Path, height: int, width: int, max_batch: int = 32, opt_batch: int = 16,
               timing_cache: Path | None = None, workspace_gib: float = 4.0) -> bytes:
    """Parse the ONNX file and build a serialized engine for N x 1 x height x width inputs, N in 1..max_batch."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # implied in TensorRT 11
    network = builder.create_network(1 << int(strongly_typed) if strongly_typed is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, 1, height, width), (min(opt_batch, max_batch), 1, height, width),
                      (max_batch, 1, height, width))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} at {height}x{width}")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class _Slot:
    """Pinned host buffers, device buffers and a stream for one batch in flight."""

    def __init__(self, cuda, max_batch: int, height: int, width: int, in_dtype):
        self.stream = cuda.Stream()
        self.h_in = cuda.pagelocked_empty((max_batch, 1, height, width), in_dtype)
        self.h_out = cuda.pagelocked_empty((max_batch, height, width), np.uint8)
        self.d_in = cuda.mem_alloc(self.h_in.nbytes)
        self.d_out = cuda.mem_alloc(self.h_out.nbytes)
        self.n = 0


class TensorRTBackend:
    """``Backend``: asynchronous (two execution slots), normalized input only, on CUDA."""

    name = "tensorrt"
    device_type = "cuda"
    asynchronous = True
    raw_input = False

    def __init__(self, model: ModelInfo, threads: int | None = None, max_batch: int = 32):
        if model.is_checkpoint:
            raise UserError("the tensorrt backend runs ONNX files: export the checkpoint with `nucleiscreen export`")
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise UserError(f"the tensorrt backend needs {exc.name}: pip install 'nucleiscreen[gpu]'") from None
        cuda.init()
        self.cuda, self.trt = cuda, trt
        self.device = cuda.Device(0)
        self.context = self.device.retain_primary_context()
        self.model, self.max_batch = model, max_batch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.in_dtype = np.float16 if model.input_dtype == "float16" else np.float32
        self.shape: tuple[int, int] | None = None
        self.slots: list[_Slot] = []
        self.next_slot = 0
        self.preferred_batch = 16
        self.description = f"TensorRT {trt.__version__} ({self.device.name()}, {np.dtype(self.in_dtype).name})"

    @contextmanager
    def _current(self):
        """The primary context, current on this thread for the block (CUDA contexts are per thread)."""
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def ensure_plan(self, height: int, width: int) -> Path:
        """The cached plan for (padded) frames of this size, built first if missing; returns its path."""
        with self._current():
            return self._ensure_plan(height, width)

    def _ensure_plan(self, height: int, width: int) -> Path:
        gpu, version = self.device.name(), self.trt.__version__
        folder = cache_dir()
        key = plan_key(self.model, gpu, version, height, width, self.max_batch)
        plan_path = folder / f"{self.model.path.stem}-{key}.plan"
        if not plan_path.exists():
            safe_gpu = "".join(c if c.isalnum() else "_" for c in gpu)
            plan = build_plan(self.model.path, height, width, self.max_batch,
                              timing_cache=folder / f"timing-{safe_gpu}-{version}.cache")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = plan_path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(plan_path)
        return plan_path

    def _engine_for(self, height: int, width: int) -> None:
        """Load (or build and cache) the plan for this frame size; allocate the two slots."""
        plan_path = self._ensure_plan(height, width)
        plan = plan_path.read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path} (built by another TensorRT or GPU?)")
        self.contexts = [self.engine.create_execution_context() for _ in range(2)]
        self.slots = [_Slot(self.cuda, self.max_batch, height, width, self.in_dtype) for _ in range(2)]
        for ctx, slot in zip(self.contexts, self.slots):
            ctx.set_tensor_address(INPUT, int(slot.d_in))
            ctx.set_tensor_address(OUTPUT, int(slot.d_out))
        self.shape = (height, width)

    def submit(self, batch: np.ndarray) -> int:
        """Copy a batch to the device and enqueue it on the next slot's stream; returns the slot to collect."""
        with self._current():
            return self._submit(batch)

    def _submit(self, batch: np.ndarray) -> int:
        n, _, h, w = batch.shape
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the engine's maximum {self.max_batch}")
        if self.shape != (h, w):
            self._engine_for(h, w)
        i = self.next_slot
        slot, ctx = self.slots[i], self.contexts[i]
        slot.stream.synchronize()  # the slot's previous batch must be collected before its buffers are reused
        slot.h_in[:n] = batch
        if not ctx.set_input_shape(INPUT, (n, 1, h, w)):
            raise RuntimeError(f"TensorRT rejected the input shape {(n, 1, h, w)}")
        self.cuda.memcpy_htod_async(slot.d_in, slot.h_in[:n], slot.stream)
        if not ctx.execute_async_v3(slot.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.memcpy_dtoh_async(slot.h_out[:n], slot.d_out, slot.stream)
        # Only a queued batch takes the slot: after a failed submit the next one reuses it, so a batch still in
        # flight in the other slot is never overwritten before it is collected (the pipeline keeps at most two).
        slot.n = n
        self.next_slot = 1 - i
        return i

    def collect(self, i: int) -> np.ndarray:
        with self._current():
            slot = self.slots[i]
            slot.stream.synchronize()
            return slot.h_out[:slot.n].copy()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.collect(self.submit(batch))

    def submit_raw(self, frames) -> object:
        raise NotImplementedError("the tensorrt backend takes normalized frames only (raw_input is False)")

    collect_raw = submit_raw
