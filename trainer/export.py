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

import json
import warnings
from pathlib import Path

import torch

from nucleiscreen.engine.model import CARD_KEY
from nucleiscreen.errors import UserError
from nucleiscreen.network import TTA_CHOICES, ExportHead, boundary_bias, load_checkpoint, model_card


def export_onnx(checkpoint: str | Path, out: str | Path, fp16: bool = False, probabilities: bool = False,
                tta: int = 1, opset: int = 17) -> Path:
    """Write the ONNX file (FP32, or FP16 with ``fp16=True``; ``tta`` > 1: test-time augmentation in the graph, see
    ``ExportHead``) with its model card; returns its path."""
    import onnx

    if tta not in TTA_CHOICES:
        raise UserError(f"test-time augmentation takes one of {', '.join(map(str, TTA_CHOICES))} transforms, not {tta}")
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False) if Path(checkpoint).is_file() else {}
    if ck.get("config", {}).get("init") and "params.0" in ck.get("model", {}):
        return _export_graph(ck, Path(checkpoint), Path(out), fp16 or probabilities or tta > 1)
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


def _export_graph(ck: dict, checkpoint: Path, out: Path, variant: bool) -> Path:
    """A run that trained a model file's own graph (``init`` naming one): its weights and calibrated post-processing
    written into a copy of that file, with the run's training data on the card."""
    from nucleiscreen.engine.model import load_model_info
    from nucleiscreen.trainer.checkpoint import Logits
    from nucleiscreen.trainer.finetune import write_model

    if variant:
        raise UserError(f"{checkpoint} trained the graph of a model file: it exports as that file's FP32 graph only "
                        "(no --fp16, --probabilities or --tta)")
    if "postprocessing" not in ck:
        raise UserError(f"{checkpoint} has no calibrated post-processing: export the run's best.pt")
    cfg = ck["config"]
    info = load_model_info(cfg["init"])
    net = Logits(info.path)
    net.load_state_dict(ck["model"])
    training = {"finetuned_from": {"path": info.path.name, "sha256": info.sha256}, "sources": cfg["train"],
                "simulated_fraction": cfg["sim_fraction"], "teacher": cfg.get("teacher"), "steps": ck.get("step"),
                "batch": cfg["batch"], "crop": cfg["crop"], "lr": cfg["lr"], "seed": cfg["seed"],
                "validation": cfg.get("val")}
    write_model(info, net, ck["postprocessing"], out, training, ck.get("val", {}))
    return out
