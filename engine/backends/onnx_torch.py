"""An ONNX graph run by PyTorch: the shipped model file on a machine with torch but no TensorRT or onnxruntime-gpu.

The ONNX file stays the one source of truth (weights, boundary bias, ArgMax): its nodes are evaluated in order with
torch operators, so an FP32 or FP16 export, a test-time-augmented export or a newly trained model runs without a
second network definition. Shape arithmetic (Shape, Gather, Slice, Concat of shape vectors) is done on Python ints,
which keeps the module traceable by ``torch.compile`` and capturable in a CUDA graph. Only the operators U-Net
exports use are implemented; any other one is refused with its name when the file is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nucleiscreen.errors import UserError

# ONNX TensorProto element types -> torch dtypes
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class OnnxModule(torch.nn.Module):
    """The graph of an ONNX file as a torch module: ``forward(image)`` returns the graph's first output.

    ``dtype`` is the compute dtype of the floating-point weights (float16 on CUDA); casts to a floating type inside
    the graph follow it, so an FP32 file runs in FP16 and an FP16 file in FP32 on the CPU."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32):
        super().__init__()
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise UserError("the torch backend reads ONNX files with the onnx package: pip install onnx") from None
        model = onnx.load(str(path))
        graph = model.graph
        self.dtype = dtype
        self.input = graph.input[0].name
        self.output = graph.output[0].name
        self.weights: dict[str, int] = {}  # initializer name -> index into self.params
        self.params = torch.nn.ParameterList()
        self.consts: dict[str, object] = {}  # small integer tensors and scalars, as Python values
        for init in graph.initializer:
            self._constant(init.name, numpy_helper.to_array(init))
        self.nodes = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self._constant(node.output[0], numpy_helper.to_array(attrs["value"]))
                continue
            if node.op_type not in _OPS:
                raise UserError(f"{Path(path).name}: the torch backend does not implement the ONNX operator "
                                f"{node.op_type!r}; use --backend onnxruntime")
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            self.nodes.append((_OPS[node.op_type], list(node.input), list(node.output), attrs))

    def _constant(self, name: str, value: np.ndarray) -> None:
        if value.dtype.kind == "f" and value.size > 1:
            self.weights[name] = len(self.params)
            self.params.append(torch.nn.Parameter(torch.from_numpy(value.copy()).to(self.dtype), requires_grad=False))
        elif value.dtype.kind == "f":
            self.consts[name] = float(value)  # a scalar: added or multiplied in the tensor's own dtype
        else:
            self.consts[name] = value.tolist()  # shape vectors, axes, indices: Python ints

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = {self.input: image}
        for fn, inputs, outputs, attrs in self.nodes:
            args = [self._value(env, name) for name in inputs]
            env[outputs[0]] = fn(self, args, attrs)
        return env[self.output]

    def _value(self, env: dict, name: str):
        if name == "":
            return None
        if name in env:
            return env[name]
        if name in self.weights:
            return self.params[self.weights[name]]
        return self.consts[name]


def _pads(attrs: dict) -> tuple[int, int]:
    p = attrs.get("pads", [0, 0, 0, 0])
    if p[0] != p[2] or p[1] != p[3]:
        raise UserError(f"asymmetric padding {p} is not supported by the torch backend")
    return p[0], p[1]


def _conv(m, a, attrs):
    return F.conv2d(a[0], a[1], a[2], stride=attrs.get("strides", 1), padding=_pads(attrs),
                    dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))


def _conv_transpose(m, a, attrs):
    return F.conv_transpose2d(a[0], a[1], a[2], stride=attrs.get("strides", 1), padding=_pads(attrs),
                              output_padding=attrs.get("output_padding", 0), groups=attrs.get("group", 1),
                              dilation=attrs.get("dilations", 1))


def _max_pool(m, a, attrs):
    return F.max_pool2d(a[0], attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"]), _pads(attrs),
                        dilation=attrs.get("dilations", 1), ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _avg_pool(m, a, attrs):
    return F.avg_pool2d(a[0], attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"]), _pads(attrs),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)),
                        count_include_pad=bool(attrs.get("count_include_pad", 0)))


def _resize(m, a, attrs):
    x, sizes = a[0], a[3] if len(a) > 3 else None
    mode = {"linear": "bilinear", "nearest": "nearest"}.get(attrs.get("mode", "nearest"))
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode is None or (mode == "bilinear" and transform not in ("half_pixel", "pytorch_half_pixel", "align_corners")) \
            or (mode == "nearest" and transform != "asymmetric"):
        raise UserError(f"Resize with mode={attrs.get('mode')!r}, {transform} is not supported by the torch backend")
    kw = {"align_corners": transform == "align_corners"} if mode == "bilinear" else {}
    if sizes is not None:
        return F.interpolate(x, size=[int(v) for v in sizes[2:]], mode=mode, **kw)
    scales = a[2]
    return F.interpolate(x, scale_factor=[float(v) for v in scales[2:]], mode=mode, **kw)


def _is_shape(v) -> bool:
    return isinstance(v, (list, int, float))


def _concat(m, a, attrs):
    if all(_is_shape(v) for v in a):
        return [x for v in a for x in (v if isinstance(v, list) else [v])]
    return torch.cat(a, dim=attrs["axis"])


def _slice(m, a, attrs):
    x, starts, ends = a[0], a[1], a[2]
    axes = a[3] if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = a[4] if len(a) > 4 and a[4] is not None else [1] * len(starts)
    if _is_shape(x):
        return x[slice(starts[0], ends[0], steps[0])]
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise UserError("Slice with a negative step is not supported by the torch backend")
        index[ax] = slice(s, min(e, x.shape[ax]), st)
    return x[tuple(index)]


def _gather(m, a, attrs):
    data, idx = a
    if _is_shape(data):
        return [data[i] for i in idx] if isinstance(idx, list) else data[idx]
    axis = attrs.get("axis", 0)
    if isinstance(idx, int):  # a scalar index drops the axis
        return data.select(axis, idx)
    return torch.index_select(data, axis, torch.as_tensor(idx, device=data.device))


def _unsqueeze(m, a, attrs):
    axes = a[1] if len(a) > 1 else attrs["axes"]
    if _is_shape(a[0]):
        return [a[0]] if not isinstance(a[0], list) else a[0]
    x = a[0]
    for ax in sorted(axes):
        x = x.unsqueeze(ax)
    return x


def _cast(m, a, attrs):
    to = _DTYPES[attrs["to"]]
    if _is_shape(a[0]):
        return a[0]
    return a[0].to(m.dtype if to.is_floating_point else to)


def _argmax(m, a, attrs):
    if attrs.get("select_last_index", 0):
        raise UserError("ArgMax with select_last_index=1 is not supported by the torch backend")
    return torch.argmax(a[0], dim=attrs.get("axis", 0), keepdim=bool(attrs.get("keepdims", 1)))


def _batch_norm(m, a, attrs):
    return F.batch_norm(a[0], a[3], a[4], a[1], a[2], training=False, eps=attrs.get("epsilon", 1e-5))


_OPS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "BatchNormalization": _batch_norm,
    "Relu": lambda m, a, attrs: F.relu(a[0]),
    "Sigmoid": lambda m, a, attrs: torch.sigmoid(a[0]),
    "Softmax": lambda m, a, attrs: torch.softmax(a[0], dim=attrs.get("axis", -1)),
    "Add": lambda m, a, attrs: a[0] + a[1],
    "Sub": lambda m, a, attrs: a[0] - a[1],
    "Mul": lambda m, a, attrs: a[0] * a[1],
    "Div": lambda m, a, attrs: a[0] / a[1],
    "Identity": lambda m, a, attrs: a[0],
    "Resize": _resize,
    "Concat": _concat,
    "Slice": _slice,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Shape": lambda m, a, attrs: list(a[0].shape),
    "Cast": _cast,
    "ArgMax": _argmax,
}
