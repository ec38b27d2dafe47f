"""Floating-point work of an ONNX model per frame, counted from its graph (no run needed).

Only the convolutions and matrix products are counted (2 FLOP per multiply-accumulate); activations, pooling,
resizing, concatenation and the ArgMax are memory traffic rather than arithmetic and are left out. The count is
for one frame of the given padded size: the batch dimension is set to 1.

    python -m nucleiscreen.bench.flops [MODEL] [--size 1120]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

CONV_OPS = ("Conv", "ConvTranspose")
MATMUL_OPS = ("MatMul", "Gemm")


def _shaped_graph(path: str | Path, height: int, width: int):
    """The graph of ``path`` with its ``image`` input fixed to 1 x C x ``height`` x ``width`` and every value's
    shape inferred (``data_prop`` follows the Shape/Slice arithmetic of a Resize to its output size)."""
    import onnx

    model = onnx.load(str(path))
    image = next(i for i in model.graph.input if i.name == "image")
    dims = image.type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, None, height, width)):
        if value is not None:
            dim.ClearField("dim_param")
            dim.dim_value = value
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True).graph
    except onnx.shape_inference.InferenceError as exc:  # e.g. a size the U-Net's poolings do not divide
        first = str(exc).split("\n")[0]
        raise ValueError(f"{Path(path).name}: shapes of a {height}x{width} frame cannot be inferred (is the size a "
                         f"multiple of the model's spatial multiple?): {first}") from None


def _shapes(graph) -> dict[str, tuple[int, ...]]:
    """Name -> static shape of every input, output, intermediate value and initializer whose shape is known."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)
    return shapes


def _node_macs(node, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one Conv, ConvTranspose, MatMul or Gemm node."""
    try:
        x, w, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
    except KeyError as exc:
        raise ValueError(f"{node.op_type} node {node.name!r}: shape of {exc} not inferred") from None
    # The weight's shape carries the groups: Conv's is Cout x Cin/groups x kh x kw (each output element sums
    # Cin/groups*kh*kw products), ConvTranspose's Cin x Cout/groups x kh x kw (each input element scatters to
    # Cout/groups*kh*kw outputs).
    if node.op_type == "Conv":
        return math.prod(y) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":
        return math.prod(x) * math.prod(w[1:])
    trans_a = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
    return math.prod(y) * (x[-2] if trans_a else x[-1])  # (M, K) @ (K, N): each output element sums K products


def model_gflops(path: str | Path, height: int = 1120, width: int = 1120) -> float:
    """GFLOP (1e9 floating-point operations) of one ``height`` x ``width`` frame through the model.

    Parameters
    ----------
    path : str or Path
        ONNX model file whose input ``image`` is N x C x H x W.
    height, width : int
        Frame size as the network sees it (padded to the model's spatial multiple).

    Returns
    -------
    float
        2 x the multiply-accumulates of the Conv, ConvTranspose, MatMul and Gemm nodes, in units of 1e9.

    Raises
    ------
    ValueError
        When the shapes could not be inferred (a size that the model's poolings do not divide, say).
    """
    graph = _shaped_graph(path, height, width)
    shapes = _shapes(graph)
    return 2 * sum(_node_macs(n, shapes) for n in graph.node if n.op_type in CONV_OPS + MATMUL_OPS) / 1e9


def model_parameters(path: str | Path) -> int:
    """Number of floating-point weights (the sum of the sizes of the float initializers) of an ONNX model.

    Parameters
    ----------
    path : str or Path
        ONNX model file.

    Returns
    -------
    int
        Elements of the float16/float32/float64/bfloat16 initializers; integer constants (shapes, indices) are not
        parameters.
    """
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    graph = onnx.load(str(path)).graph
    return int(sum(math.prod(t.dims) for t in graph.initializer if t.data_type in floats))


def layer_gflops(path: str | Path, height: int = 1120, width: int = 1120) -> list[tuple[str, tuple, float]]:
    """(node name, output shape, GFLOP) of each counted node: where the work of ``model_gflops`` is."""
    graph = _shaped_graph(path, height, width)
    shapes = _shapes(graph)
    return [(n.name or n.output[0], shapes[n.output[0]], 2 * _node_macs(n, shapes) / 1e9)
            for n in graph.node if n.op_type in CONV_OPS + MATMUL_OPS]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="ONNX file (default: the shipped U-Net)")
    p.add_argument("--size", type=int, default=1120, help="padded frame size in px (default: 1120)")
    p.add_argument("--layers", action="store_true", help="list the GFLOP of each counted node")
    a = p.parse_args(argv)
    if a.model is None:
        from nucleiscreen.engine.model import default_model_path

        a.model = default_model_path()
    if a.layers:
        for name, shape, g in layer_gflops(a.model, a.size, a.size):
            print(f"  {g:8.3f} GFLOP  {str(shape):24s} {name}")
    params = model_parameters(a.model)
    print(f"{Path(a.model).name}: {model_gflops(a.model, a.size, a.size):.2f} GFLOP per {a.size}x{a.size} frame, "
          f"{params / 1e6:.3f} M parameters")


if __name__ == "__main__":
    main()
