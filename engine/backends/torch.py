"""torch backend: the model run by PyTorch, for GPU machines with PyTorch but no TensorRT or onnxruntime-gpu.

It runs an ONNX model file (the shipped one by default) through ``onnx_torch.OnnxModule``, or the U-Net of a
training checkpoint (``.pt``). On CUDA the whole frame path is on the device: raw uint16 frames are copied up from
pinned host buffers on a copy stream, normalized there (``normalize_on_device``: the histogram percentiles and
range floors of ``kernels/normalize.py``), padded, run through the network in FP16 channels-last with the boundary
bias and ArgMax, and only the uint8 class maps come back, so the copy of one batch overlaps the compute of the
previous one. ``graphs=True`` replays each batch shape's compute from a captured CUDA graph, ``compile=True`` runs it
through ``torch.compile``. On the CPU it computes in FP32 (for tests, and the parity check against onnxruntime).
Needs torch and onnx (the [torch] extra), which the runtime otherwise does not.
"""

from __future__ import annotations

import numpy as np

from nucleiscreen.engine.backends import SyncBackend
from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import Normalization

NBINS = 65536


def normalize_on_device(frames, norm: Normalization):
    """``kernels.normalize.normalize`` of a batch of integer frames (N x H x W tensor: uint8, int32, or int16 holding
    uint16 bits) on their device, as float32: the same lower percentiles from per-frame histograms, so ``lo`` and
    ``hi`` equal the CPU kernel's exactly; the rescale is float32 arithmetic (the CPU kernel's is float64 rounded
    to float32: values may differ in the last bit). Returns (normalized N x H x W, lo, hi), lo and hi of shape N."""
    import torch

    n = frames.shape[0]
    values = frames.to(torch.int32)
    if frames.dtype == torch.int16:  # uint16 frames travel as int16 (torch's uint16 support is partial)
        values.bitwise_and_(0xFFFF)
    flat = values.reshape(n, -1).to(torch.int64)
    pixels = flat.shape[1]
    index = flat + torch.arange(n, device=flat.device).mul_(NBINS)[:, None]
    hist = torch.zeros(n * NBINS, dtype=torch.int32, device=flat.device)
    hist.scatter_add_(0, index.reshape(-1), torch.ones(1, dtype=torch.int32, device=flat.device).expand(n * pixels))
    cdf = hist.view(n, NBINS).cumsum(1, dtype=torch.int32)
    need = torch.tensor([[max(1, int(np.ceil(norm.low / 100.0 * pixels))),
                          max(1, int(np.ceil(norm.high / 100.0 * pixels)))]] * n, dtype=torch.int32,
                        device=flat.device)
    lohi = torch.searchsorted(cdf, need).to(torch.float32)  # the first bin whose cumulative count reaches `need`
    lo, hi = lohi[:, 0], lohi[:, 1]
    rng = torch.maximum(hi - lo, (norm.min_ratio - 1.0) * lo).clamp_(min=max(norm.min_range, 1e-6))
    x = (values.to(torch.float32) - lo[:, None, None]) * (1.0 / rng)[:, None, None]
    return x.clamp_(0.0, 1.0), lo, hi


class TorchBackend(SyncBackend):
    """``Backend``: normalized batches synchronously (``infer``); raw uint8/uint16 frames normalized, padded and
    segmented on the device, asynchronously on CUDA (``submit_raw``: copy and compute on their own streams)."""

    name = "torch"
    raw_input = True

    def __init__(self, model: ModelInfo, threads: int | None = None, device: str | None = None,
                 graphs: bool = False, compile: bool = False, channels_last: bool = True):
        try:
            import torch
        except ImportError:
            raise UserError("--backend torch needs PyTorch: pip install 'nucleiscreen[torch]'") from None
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.device_type = self.device.type
        self.asynchronous = self.cuda
        self.dtype = torch.float16 if self.cuda else torch.float32
        if model.is_checkpoint:
            from nucleiscreen.network import ExportHead, boundary_bias, load_checkpoint

            net, ck = load_checkpoint(model.path)
            net = ExportHead(net, boundary_bias=boundary_bias(ck))  # the argmax exactly as the ONNX export does it
        else:
            from nucleiscreen.engine.backends.onnx_torch import OnnxModule

            net = OnnxModule(model.path, self.dtype)
        net = net.to(self.device, self.dtype).eval()
        self.channels_last = self.cuda and channels_last
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if not self.cuda and threads:
            torch.set_num_threads(threads)
        self.net = net
        self.norm = model.normalization
        self.multiple = model.multiple
        self.graphs = graphs and self.cuda
        self.compute = torch.compile(self._compute, dynamic=False) if compile else self._compute
        self._graphs: dict[tuple, tuple] = {}  # (n, h, w) -> (graph, static input, static output)
        self.preferred_batch = 16 if self.cuda else 1
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self._free: dict[tuple, list] = {}  # (n, h, w, bytes) -> free (pinned input, pinned output) pairs
        mode = "+".join(["fp16" if self.cuda else "fp32", *(["channels-last"] if self.channels_last else []),
                         *(["cuda-graphs"] if self.graphs else []), *(["compiled"] if compile else [])])
        self.description = f"torch {torch.__version__} ({self.device.type}, {mode})"

    # -- the protocol of every backend: normalized, padded float frames in, class maps out ---------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.net(x).cpu().numpy()

    # -- raw frames: normalization, padding, network and ArgMax on the device ----------------------------------------
    def _compute(self, frames):
        """Class maps (N x H x W uint8) of raw integer frames already on the device."""
        torch = self.torch
        n, h, w = frames.shape
        x, _, _ = normalize_on_device(frames, self.norm)
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        x = x[:, None]
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)[:, :h, :w].to(torch.uint8)

    def submit_raw(self, frames) -> object:
        """Start the class maps of a batch of raw frames (an N x H x W array, or a sequence of same-shape H x W
        frames; uint8 or uint16). On CUDA each frame is copied once, into a pinned host buffer, and this returns a
        token at once (the work is queued on the copy and compute streams); ``collect_raw`` waits for it."""
        torch = self.torch
        frames = list(frames) if not isinstance(frames, np.ndarray) else frames
        dtype = frames[0].dtype
        if dtype not in (np.uint8, np.uint16) or any(f.dtype != dtype for f in frames):
            raise ValueError(f"raw frames must be uint8 or uint16 (all alike), got {dtype}")
        if not self.cuda:
            with torch.inference_mode():
                return self._compute(torch.from_numpy(_bits(np.stack(frames)))).numpy()
        shape = (len(frames), *frames[0].shape)
        key = shape + (dtype.itemsize,)
        free = self._free.setdefault(key, [])
        if not free:  # one pair of pinned buffers per batch in flight (two in the pipeline: copy k+1, compute k)
            tdtype = torch.int16 if dtype == np.uint16 else torch.uint8
            free.append((torch.empty(shape, dtype=tdtype, pin_memory=True),
                         torch.empty(shape, dtype=torch.uint8, pin_memory=True)))
        host_in, host_out = free.pop()
        staging = host_in.numpy()
        for k, f in enumerate(frames):
            staging[k] = _bits(f)
        with torch.inference_mode():
            with torch.cuda.stream(self.copy_stream):
                dev = host_in.to(self.device, non_blocking=True)
            self.compute_stream.wait_stream(self.copy_stream)
            with torch.cuda.stream(self.compute_stream):
                dev.record_stream(self.compute_stream)
                out = self._replay(dev) if self.graphs else self.compute(dev)
                host_out.copy_(out, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.compute_stream)
        return done, key, host_in, host_out

    def collect_raw(self, token) -> np.ndarray:
        if isinstance(token, np.ndarray):
            return token
        done, key, host_in, host_out = token
        done.synchronize()
        out = host_out.numpy().copy()
        self._free[key].append((host_in, host_out))  # the buffers serve the next batch of this shape
        return out

    def _replay(self, dev):
        """The compute of one batch shape from a CUDA graph captured at its first use (after a warm-up run)."""
        torch = self.torch
        key = tuple(dev.shape)
        if key not in self._graphs:
            static_in = dev.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.compute(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.compute(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(dev)
        graph.replay()
        return static_out


def _bits(frames: np.ndarray) -> np.ndarray:
    """uint16 frames as int16 of the same bits (what ``normalize_on_device`` takes); uint8 ones as they are."""
    frames = np.ascontiguousarray(frames)
    return frames.view(np.int16) if frames.dtype == np.uint16 else frames
