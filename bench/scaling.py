"""Does the engine keep its bottleneck fed, and does its memory stay flat as a screen grows?

Runs ``nucleiscreen segment`` in a fresh process over 1,000 and then 10,000 small simulated frames (96 x 96 px by
default, where the network is cheap and decoding, post-processing and writing weigh most) and reports, for each: wall
time, frames/s, each stage's busy time as a share of the wall time (decode and post-processing run on worker threads,
so their share can exceed 100 %), and the process's peak RSS. The 10k/1k RSS ratio should be ~1.

``--tiny`` swaps the U-Net for a tiny model (one 1x1 convolution and the ArgMax, built here with ``onnx.helper``;
needs the ``onnx`` package of the ``train`` extra) on larger frames, so inference is nearly free and decoding and
post-processing dominate: the question is then whether the pipeline keeps its busiest stage fed (target >= 85 % of the
wall time).

    python -m nucleiscreen.bench.scaling
    python -m nucleiscreen.bench.scaling --tiny --frames 2000 --size 512 --batch-size 4
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from nucleiscreen.simulate import frame_file_name, plate_name, synth_frame, well_names

_CHILD = """
import json, resource, sys
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.run import segment
batch = int(sys.argv[4]) if sys.argv[4] else None
res = segment([sys.argv[1]], sys.argv[2], model=sys.argv[3] or None,
              options=SegmentOptions(progress=False, batch_size=batch))
print(json.dumps({"frames": res.frames, "seconds": res.seconds, "busy": res.busy,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_screen(folder: Path, frames: int, size: int) -> None:
    """``frames`` CX7-named frames over as many 384-well plates as needed; 64 distinct images, reused."""
    images = [synth_frame(np.random.default_rng(i), (size, size))[0] for i in range(64)]
    wells = well_names()
    for i in range(frames):
        plate = plate_name(i // (384 * 16))
        well = wells[(i // 16) % 384]
        (folder / plate).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / plate / frame_file_name(plate, well, i % 16, 0, "tif"), images[i % 64])


def tiny_model(path: Path) -> Path:
    """A valid nucleiscreen model that costs almost nothing to run: logits = a 1x1 convolution of the normalized
    input (interior where it is bright), ArgMax and Cast to uint8 in the graph, and a model card."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 1, 1, 1], [-8.0, 8.0, 0.0])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], [2.0, -2.0, 0.0])
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["arg"], axis=1, keepdims=0),
             helper.make_node("Cast", ["arg"], ["classes"], to=TensorProto.UINT8)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("classes", TensorProto.UINT8, ["N", "H", "W"])],
                              initializer=[weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    card = {"format": 1, "architecture": "tiny (benchmark)", "classes": ["background", "interior", "boundary"],
            "spatial_multiple": 1, "normalization": {}, "postprocessing": {"method": "instances_from_classes"}}
    entry = model.metadata_props.add()
    entry.key, entry.value = "nucleiscreen", json.dumps(card)
    onnx.save(model, str(path))
    return path


def run(frames: int, size: int, tmp: Path, model: Path | None = None, batch_size: int | None = None) -> dict:
    src = tmp / f"frames{frames}"
    write_screen(src, frames, size)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(tmp / f"run{frames}"), str(model or ""),
                          str(batch_size or "")], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - t
    return result


def main(sizes: tuple[int, ...] = (1000, 10000), size: int = 96, tiny: bool = False,
         batch_size: int | None = None) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny.onnx") if tiny else None
        for n in sizes:
            r = run(n, size, Path(tmp), model, batch_size)
            results[n] = r
            shares = ", ".join(f"{k} {100 * v / r['seconds']:.0f}%" for k, v in sorted(r["busy"].items()))
            busiest = max(r["busy"], key=r["busy"].get)
            print(f"{n:6d} frames of {size}x{size}{' (tiny model)' if tiny else ''}: {r['seconds']:6.1f} s in "
                  f"segment, {n / r['seconds']:7.1f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB; busy share of "
                  f"wall: {shares}; busiest stage {busiest} {100 * r['busy'][busiest] / r['seconds']:.0f}%")
    if len(sizes) == 2:
        a, b = (results[n]["peak_rss_mb"] for n in sizes)
        print(f"peak RSS {sizes[1]} / {sizes[0]} frames: {b / a:.2f}x (flat is 1.0; target within 10 %)")
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[1000, 10000], help="screen sizes to run")
    ap.add_argument("--size", type=int, default=96, help="frame side in px")
    ap.add_argument("--tiny", action="store_true", help="a near-free model instead of the shipped U-Net")
    ap.add_argument("--batch-size", type=int, help="frames per network call (default: the backend's, 1 on the CPU)")
    args = ap.parse_args()
    main(tuple(args.frames), args.size, args.tiny, args.batch_size)
