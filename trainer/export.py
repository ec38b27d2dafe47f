"""Export a trained U-Net to the ONNX model-file interface of nucleiscreen.

The ONNX graph takes ``image`` (N x 1 x H x W, float32 or float16, already normalized by the engine; N, H, W
dynamic, H and W multiples of ``spatial_multiple``) and returns ``classes`` (uint8 N x H x W: ArgMax and Cast inside
the graph, so an accelerator ships one byte per pixel back instead of three floats) and, when asked, ``probabilities``
(N x 3 x H x W softmax). The model card, JSON under the ``nucleiscreen`` key of the ONNX ``metadata_props``, tells the
engine how to normalize input and post-process output.

FP16: TensorRT 10.12+ builds strongly typed networks and TensorRT 11 dropped the FP16 builder flag, so precision must
come from the ONNX itself; the FP16 variant is the same network traced in half precision (inputs, weights and
activations float16). The CPU fallback uses the FP32 file (onnxruntime's CPU provider computes FP16 through FP32).
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path

import torch

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.contrast import DEFAULT_CONTRAST_AREA
from nucleiscreen.kernels.instances import DEFAULT_MIN_AREA
from nucleiscreen.simulate import PIXEL_SIZE_UM
from nucleiscreen.trainer.model import TTA_CHOICES, ExportHead, UNet, UNetConfig

CARD_KEY = "nucleiscreen"
CLASSES = ["background", "interior", "boundary"]


def load_checkpoint(path: str | Path) -> tuple[UNet, dict]:
    """The network and the training configuration stored in a ``best.pt``/``last.pt`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "model" not in ck or "config" not in ck:
        raise UserError(f"{path} is not a nucleiscreen checkpoint (no model/config entries)")
    if ck["config"].get("arch", "unet") != "unet":
        raise UserError(f"{path} is a {ck['config']['arch']} model; export writes U-Net class-map models, the "
                        "engine has no post-processing for the HoVer-style outputs")
    net = UNet(UNetConfig(**ck["config"]["model"]))
    net.load_state_dict(ck["model"])
    return net.eval(), ck


def boundary_bias(ck: dict) -> float:
    """The calibrated bias on the boundary logit of a checkpoint (0 for checkpoints calibrated before it existed)."""
    return float(ck.get("postprocessing", {}).get("boundary_bias", 0.0))


def model_card(ck: dict, dtype: str, tta: int = 1) -> dict:
    cfg = ck["config"]
    model = UNetConfig(**cfg["model"])
    bias = boundary_bias(ck)
    return {
        "format": 1,
        "architecture": "unet",
        "model": model.to_dict(),
        "input": {"name": "image", "dtype": dtype, "layout": "NCHW", "channels": 1},
        "outputs": {"classes": "uint8 NxHxW argmax class map" +
                    (f" (boundary logit {bias:+g} inside the graph)" if bias else "")},
        "classes": CLASSES,
        "spatial_multiple": model.multiple,
        "test_time_augmentation": tta,  # dihedral transforms averaged inside the graph (1: none)
        "pixel_size_um": PIXEL_SIZE_UM,
        "normalization": cfg["norm"],
        "postprocessing": {"method": "instances_from_classes", "boundary_width": cfg.get("boundary_width", 2),
                           "solid_area": cfg.get("solid_area", 0),
                           "max_grow": ck.get("postprocessing", {}).get("max_grow", cfg.get("max_grow", 8)),
                           "min_area": ck.get("postprocessing", {}).get("min_area", DEFAULT_MIN_AREA),
                           "min_contrast": ck.get("postprocessing", {}).get("min_contrast", 0.0),
                           "min_edge_area": ck.get("postprocessing", {}).get("min_edge_area", 0),
                           "grow_area": ck.get("postprocessing", {}).get("grow_area", 0),
                           "grow_level": ck.get("postprocessing", {}).get("grow_level", 0.5),
                           "boundary_bias": bias,  # applied inside the graph, before the ArgMax (ExportHead)
                           "contrast_area": DEFAULT_CONTRAST_AREA},
        "training_data": {"sources": cfg["train"], "simulated_fraction": cfg["sim_fraction"], "steps": ck.get("step"),
                          "init": cfg.get("init"),  # the checkpoint fine-tuned, or those whose weights were averaged
                          "validation": cfg.get("val")},
        "validation_metrics": ck.get("val", {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


def export_onnx(checkpoint: str | Path, out: str | Path, fp16: bool = False, probabilities: bool = False,
                tta: int = 1, opset: int = 17) -> Path:
    """Write the ONNX file (FP32, or FP16 with ``fp16=True``; ``tta`` > 1: test-time augmentation in the graph, see
    ``ExportHead``) with its model card; returns its path."""
    import onnx

    if tta not in TTA_CHOICES:
        raise UserError(f"test-time augmentation takes one of {', '.join(map(str, TTA_CHOICES))} transforms, not {tta}")
    net, ck = load_checkpoint(checkpoint)
    head = ExportHead(net, probabilities, tta, boundary_bias(ck))
    dtype = torch.float16 if fp16 else torch.float32
    head = head.to(dtype)
    m = net.cfg.multiple
    dummy = torch.zeros(1, 1, 4 * m, 4 * m, dtype=dtype)
    outputs = ["classes", "probabilities"] if probabilities else ["classes"]
    axes = {"image": {0: "N", 2: "H", 3: "W"}, "classes": {0: "N", 1: "H", 2: "W"}}
    if probabilities:
        axes["probabilities"] = {0: "N", 2: "H", 3: "W"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript and gains
        # nothing for a plain CNN; it warns on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(head, (dummy,), str(tmp), input_names=["image"], output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    card = model_card(ck, "float16" if fp16 else "float32", tta)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(card)
    proto.producer_name = "nucleiscreen"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    tmp.unlink()
    return out
