"""INT8 model files for the CPU: static post-training quantization of an exported U-Net with onnxruntime.

The file stays an ordinary model file (``image`` float32 in, ``classes`` uint8 out, the card under ``nucleiscreen``),
so the engine runs it with ``--model`` on its onnxruntime backend unchanged. Three steps:

1. ``fold_head`` (exact, no calibration): the graph's full-resolution tail ``Conv1x1(Concat(Resize(u), r)) + bias``
   becomes ``Resize(Conv1x1(u)) + Conv1x1(r)``: bilinear resizing is linear with weights summing to one, so it
   commutes with the 1x1 head; three channels are resized instead of sixteen, the 24-channel full-resolution Concat
   disappears, and the boundary bias (an Add on the boundary logit before the ArgMax) folds into the head's bias.
2. ``quant_pre_process`` (onnxruntime's shape inference and graph clean-up, batch norm already folded by the export).
3. ``quantize_static`` in QDQ format: weights int8 per output channel, activations uint8 (U8S8: the only int8
   form onnxruntime's x86 kernels run fast without VNNI; S8S8 QOperator ran 3x *slower* than FP32 on an AVX2 CPU),
   ranges from MinMax over calibration frames normalized and padded exactly as the engine does. The convolution
   that reads the raw input (one channel: nothing to gain), the full-resolution refinement branch (onnxruntime's INT8
   kernels are slow on its 8 channels) and the 1x1 head (quantized logits move the argmax at nuclei borders) stay
   FP32 (``KEEP_FP32``).

Measured on the 10 validation frames (docs/benchmarks.md): F1@0.5/0.7/0.9 within 0.002 of the FP32 model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nucleiscreen.engine.model import CARD_KEY, ModelInfo, load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import normalize

# Nodes of the shipped U-Net left in FP32: the 1-channel-input convolution of the U-Net, the full-resolution
# refinement branch (8-channel convolutions: onnxruntime's INT8 kernels ran them 2-3x slower than its FP32 ones) and
# the head (after fold_head).
KEEP_FP32 = ("/net/encoder/down.0/down.0.0/Conv",
             *(f"/net/refine/refine.{i}/Conv" for i in (0, 3, 6, 9)),
             *(f"/net/refine/refine.{i}/Relu" for i in (2, 5, 8, 11)),
             "/head/conv_u", "/head/conv_r", "/head/add", "/head/resize", "/ArgMax", "/Cast")


def fold_head(model):
    """The ONNX model with its head run before the up-sampling and the boundary bias in the head's bias (see the
    module docstring); the same class map up to float rounding. A graph without the refinement head (no ``Concat``
    of a ``Resize`` into a 1x1 ``Conv``) comes back unchanged."""
    import onnx
    from onnx import helper
    from onnx import numpy_helper as nh

    g = model.graph
    by_output = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray:
        return nh.to_array(consts[name] if name in consts else inits[name])

    argmax = next((n for n in g.node if n.op_type == "ArgMax"), None)
    head, bias, tail = by_output.get(argmax.input[0]) if argmax is not None else None, 0.0, []
    if head is not None and head.op_type == "Concat":  # ExportHead's bias: Concat(head[:, :2], head[:, 2:] + bias)
        keep, add = (by_output.get(i) for i in head.input)
        if add is None or add.op_type != "Add" or keep is None or keep.op_type != "Slice":
            return model
        boundary = by_output[add.input[0]]
        # head[:, 0:2] and head[:, 2:]: the slices ExportHead writes, on the channel axis
        if [int(value(keep.input[i])[0]) for i in (1, 2, 3)] != [0, 2, 1] or boundary.op_type != "Slice" \
                or [int(value(boundary.input[i])[0]) for i in (1, 3)] != [2, 1] or boundary.input[0] != keep.input[0]:
            return model
        tail = [head, keep, add, boundary]
        bias = float(value(add.input[1]))
        head = by_output.get(keep.input[0])
    concat = by_output.get(head.input[0]) if head is not None and head.op_type == "Conv" else None
    resize = by_output.get(concat.input[0]) if concat is not None and concat.op_type == "Concat" else None
    if resize is None or resize.op_type != "Resize" or len(concat.input) != 2:
        return model
    w = value(head.input[1])
    b = value(head.input[2]).copy()
    b[-1] += bias  # the boundary class is the last
    u, r = resize.input[0], concat.input[1]
    producer = by_output[u]
    if producer.op_type == "Relu":
        producer = by_output[producer.input[0]]
    cu = value(producer.input[1]).shape[0]  # u's channels: the output channels of the convolution making it
    if w.shape[1] <= cu or w.shape[2:] != (1, 1):
        return model
    g.initializer.extend([nh.from_array(w[:, :cu], "head.w_u"), nh.from_array(w[:, cu:], "head.w_r"),
                          nh.from_array(b, "head.b")])
    # the Resize's output size is Shape(u)[:2] ++ (H, W): N and C now come from the 3-channel tensor
    shape_u = next(n for n in g.node if n.op_type == "Shape" and n.input[0] == u)
    shape_u.input[0] = "head_u"
    new = [helper.make_node("Conv", [u, "head.w_u"], ["head_u"], name="/head/conv_u", kernel_shape=[1, 1]),
           helper.make_node("Resize", ["head_u", *resize.input[1:]], ["head_u_full"], name="/head/resize",
                            **{a.name: helper.get_attribute_value(a) for a in resize.attribute}),
           helper.make_node("Conv", [r, "head.w_r", "head.b"], ["head_r"], name="/head/conv_r", kernel_shape=[1, 1]),
           helper.make_node("Add", ["head_u_full", "head_r"], ["logits"], name="/head/add")]
    argmax.input[0] = "logits"
    dropped = {id(n) for n in (head, concat, resize, *tail)}
    nodes = [n for n in g.node if id(n) not in dropped] + new
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(_topological(nodes, {i.name for i in g.input} | {i.name for i in kept}))
    onnx.checker.check_model(model)
    return model


def _topological(nodes: list, ready: set[str]) -> list:
    ready = set(ready) | {""}
    order, pending = [], list(nodes)
    while pending:
        k = next((k for k, n in enumerate(pending) if all(i in ready for i in n.input)), None)
        if k is None:
            raise ValueError(f"graph has a cycle or an undefined input at {pending[0].name}")
        order.append(pending.pop(k))
        ready.update(order[-1].output)
    return order


def engine_input(raw: np.ndarray, info: ModelInfo) -> np.ndarray:
    """1 x 1 x H x W float32 network input of a raw frame as the engine makes it (``normalize`` with the card's
    parameters, reflect padding to the network's multiple)."""
    x = normalize(raw, info.normalization)
    ph, pw = (-x.shape[0]) % info.multiple, (-x.shape[1]) % info.multiple
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
    return np.ascontiguousarray(x[None, None], dtype=np.float32)


def _frames(frames: Sequence[str | Path | np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    raws, names = [], []
    for f in frames:
        if isinstance(f, np.ndarray):
            raws.append(f)
            names.append(f"array {f.shape[0]}x{f.shape[1]} {f.dtype}")
        else:
            raws.append(read_frame(f))
            names.append(Path(f).name)
        if raws[-1].ndim != 2:
            raise UserError(f"calibration frame {names[-1]}: expected a 2-D frame, got shape {raws[-1].shape}")
    return raws, names


def quantize_model(onnx_in: str | Path, onnx_out: str | Path, calibration_frames: Sequence[str | Path | np.ndarray],
                   keep_fp32: Sequence[str] = KEEP_FP32, fold: bool = True) -> Path:
    """Write the INT8 version of the model file ``onnx_in`` to ``onnx_out``; returns its path.

    Parameters
    ----------
    onnx_in : path
        An FP32 model file with its card (``nucleiscreen export``).
    onnx_out : path
        Where to write the INT8 model file.
    calibration_frames : sequence of paths or 2-D arrays
        Raw training frames (never validation ones) at the model's pixel size; their activation ranges set the
        quantization scales. The 30 annotated training frames are a good set; two 256 x 256 crops suffice for a test.
    keep_fp32 : node names
        Nodes left unquantized (names the graph lacks are ignored).
    fold : bool
        Apply ``fold_head`` first (exact; it makes the INT8 model about 20 % faster on onnxruntime's CPU provider).

    Returns
    -------
    Path of the written model. Its card is the input's with ``precision = "int8"`` and a ``quantization`` entry
    (method, types, the nodes kept in FP32, the calibration frames, onnxruntime's version).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info = load_model_info(onnx_in)
    if info.card.get("precision", "fp32") != "fp32" or info.input_dtype != "float32":
        raise UserError(f"{info.path.name} is not an FP32 model file: quantize the FP32 export")
    raws, names = _frames(calibration_frames)
    if not raws:
        raise UserError("quantization needs at least one calibration frame")

    class Frames(CalibrationDataReader):
        # CalibStridedMinMax: onnxruntime calibrates one frame at a time (the ranges merged), so memory stays at one
        # frame's activations (~1 GB for a 1104^2 frame) however many frames there are
        def __init__(self):
            self.it: Iterator = iter(())

        def get_next(self):
            raw = next(self.it, None)
            return None if raw is None else {"image": engine_input(raw, info)}

        def __len__(self):
            return len(raws)

        def set_range(self, start_index: int, end_index: int):
            self.it = iter(raws[start_index:end_index])

    out = Path(onnx_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(info.path))
        if fold:
            model = fold_head(model)
        folded, prepared = Path(tmp) / "folded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(folded))
        # symbolic shape inference cannot follow the Resize's computed size; onnx's own inference does
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
        present = {n.name for n in onnx.load(str(prepared)).graph.node}
        excluded = [n for n in keep_fp32 if n in present]
        quantize_static(str(prepared), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"CalibStridedMinMax": 1})
    quantized = onnx.load(str(out))
    card = dict(info.card)
    card["precision"] = "int8"
    card["quantization"] = {"tool": f"onnxruntime {ort.__version__} quantize_static", "format": "QDQ",
                            "weights": "int8 per channel", "activations": "uint8", "calibration": "MinMax",
                            "head_folded": fold, "fp32_nodes": excluded, "calibration_frames": names,
                            "source_sha256": info.sha256}
    entry = next((p for p in quantized.metadata_props if p.key == CARD_KEY), None) or quantized.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(card)
    onnx.save(quantized, str(out))
    return out
