"""Knowledge distillation: a smaller network learns the per-pixel class probabilities of a trained model file.

With ``"teacher": "unet-small"`` (a shipped model's name or an ONNX path) in a training config, every training crop
also goes through the teacher (onnxruntime, the graph cut at its logits), and the loss adds ``distill`` times the
cross-entropy of the student's softmax against the teacher's, weighted per pixel like the annotated loss (boundary
pixels 10x). The teacher's soft targets carry what 30 annotated frames cannot: how sure it is on every boundary
pixel, on simulated frames and on every deformed crop. This is how ``unet-tiny`` (half the width, a lighter
full-resolution branch) was made from ``unet-small`` (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from nucleiscreen.engine.model import load_model_info
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import Normalization


class Teacher:
    """A model file's logits (N x 3 x H x W) on already normalized crops, through onnxruntime on the CPU."""

    def __init__(self, model: str, norm: Normalization, threads: int | None = None):
        import onnx
        import onnxruntime as ort

        info = load_model_info(model)
        if info.is_checkpoint or info.input_dtype != "float32":
            raise UserError(f"teacher {model}: an FP32 ONNX model file is needed")
        if info.normalization != norm:
            raise UserError(f"teacher {info.path.name} normalizes frames otherwise than this config's norm "
                            f"({info.normalization} vs {norm}); give the config the teacher's norm")
        proto = onnx.load(str(info.path))
        convs = [n for n in proto.graph.node if n.op_type == "Conv"]
        if not convs:
            raise UserError(f"teacher {info.path.name} has no convolution")
        self.logits = convs[-1].output[0]
        proto.graph.output.append(onnx.helper.make_tensor_value_info(self.logits, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.multiple = info.multiple
        self.name = info.path.name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise UserError(f"teacher {self.name} takes crops that are multiples of {self.multiple} px")
        (out,) = self.session.run([self.logits], {"image": np.ascontiguousarray(x.float().cpu().numpy())})
        return torch.from_numpy(out)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, pixel_w: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's class distribution against the teacher's, per pixel, as the weighted mean
    with ``pixel_w`` (N x H x W)."""
    soft = torch.softmax(teacher.float(), dim=1)
    ce = -(soft * F.log_softmax(student.float(), dim=1)).sum(1)
    return (ce * pixel_w).sum() / pixel_w.sum().clamp_min(1e-6)
