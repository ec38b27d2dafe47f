"""torch backend: the U-Net of a training checkpoint (``.pt``) run by PyTorch.

For GPUs without TensorRT and for debugging: FP16 and channels-last on CUDA, FP32 on the CPU; the argmax (with the
calibrated boundary bias) runs on the device, so only the uint8 class map comes back. Needs the [train] extra
(torch), which the runtime otherwise does not.
"""

from __future__ import annotations

import numpy as np

from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import UserError


class TorchBackend:
    name = "torch"

    def __init__(self, model: ModelInfo, threads: int | None = None, device: str | None = None):
        if not model.is_checkpoint:
            raise UserError(f"the torch backend runs training checkpoints (.pt), not {model.path.name}: "
                            "use --backend onnxruntime for ONNX files")
        import torch

        from nucleiscreen.trainer.export import boundary_bias, load_checkpoint
        from nucleiscreen.trainer.model import ExportHead

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net, ck = load_checkpoint(model.path)
        net = ExportHead(net, boundary_bias=boundary_bias(ck))  # the argmax exactly as the ONNX export computes it
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float16 if self.cuda else torch.float32
        net = net.to(self.device, self.dtype).eval()
        if self.cuda:
            net = net.to(memory_format=torch.channels_last)
        elif threads:
            torch.set_num_threads(threads)
        self.net = net
        self.preferred_batch = 16 if self.cuda else 1
        self.description = f"torch {torch.__version__} ({self.device.type}, {str(self.dtype).replace('torch.', '')})"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            x = x.to(self.device, self.dtype, non_blocking=True)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.net(x).cpu().numpy()
