"""Every benchmark of ``bench/`` in one run: ``nucleiscreen bench suite`` (full size) or ``nucleiscreen bench --quick``
(small frames and few repeats: a check that the suite runs and agrees with itself, under two minutes on 2 cores).

In order: the model's GFLOP and parameters (``flops.py``), decoding (``decode.py``), the backends' agreement on the
bench frames (every backend installed must give onnxruntime's class map for an FP32 model; INT8 models and smaller
ones are reported against the FP32 model),
latency p50/p95 per backend and batch size (``latency.py``), the CPU paths with their accuracy (``cpu.py``), each
stage of a frame's path and the engine end to end (``stages.py``), the engine against a sequential loop
(``pipeline.py``), the host side per core (``host.py``) and, with the [bench] extra,
the kernels against OpenCV and scikit-image (``kernels.py``). Each step's printed table is also written to
``OUT/bench.md`` and its figures to ``OUT/bench.json``; the run fails (exit 1) when the backends disagree.

    nucleiscreen bench --quick [--out bench-results]
    nucleiscreen bench suite [--out bench-results]
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nucleiscreen.errors import UserError

AGREE = 0.999  # FP32 backends: the share of pixels whose class must match


def backend_agreement(size: int, frames: int = 2) -> dict:
    """The class maps of every model on every CPU backend installed here (``latency.cpu_variants``) on simulated
    frames: the share of pixels equal to onnxruntime's for the same model (FP32 models must agree to ``AGREE``; INT8
    kernels round differently per runtime), and to the FP32 model's on onnxruntime (what INT8 or a smaller model
    changes)."""
    from nucleiscreen.bench.latency import cpu_variants
    from nucleiscreen.engine.model import default_model_path
    from nucleiscreen.engine.segmenter import Segmenter
    from nucleiscreen.simulate import synth_frame

    raws = [synth_frame(np.random.default_rng([11, i]), (size, size))[0] for i in range(frames)]
    maps = {}
    for name, (model, backend) in cpu_variants().items():
        seg = Segmenter(model, backend, threads=1, pixel_size=None)
        maps[name] = np.stack([seg.classes([seg.prepare(raw)], raw.shape)[0] for raw in raws])
    fp32 = f"onnxruntime {default_model_path().stem}"
    out = {}
    print(f"class maps of {frames} simulated {size}x{size} frames, share of pixels equal to:")
    print(f"| model and backend | onnxruntime, same model | {fp32} |\n|---|---|---|")
    for name, (model, _) in cpu_variants().items():
        same = float(np.mean(maps[name] == maps[f"onnxruntime {model}"]))
        out[name] = {"same_model": same, "fp32": float(np.mean(maps[name] == maps[fp32])),
                     "precision": _precision(model)}
        print(f"| {name} | {same:.5f} | {out[name]['fp32']:.5f} |")
    return out


def _precision(model: str) -> str:
    from nucleiscreen.engine.model import load_model_info

    return load_model_info(model).card.get("precision", "fp32")


def steps(quick: bool) -> list[tuple[str, Callable[[], dict]]]:
    from nucleiscreen.bench import cpu, decode, host, latency, pipeline, stages
    from nucleiscreen.bench.flops import model_gflops, model_parameters
    from nucleiscreen.engine.model import default_model_path

    def flops() -> dict:
        gflop, params = model_gflops(default_model_path()), model_parameters(default_model_path())
        print(f"unet-small: {gflop:.2f} GFLOP per 1120x1120 frame, {params:,} parameters")
        return {"gflop_1120": gflop, "parameters": params}

    size = 256 if quick else 1104
    out = [("model", flops),
           ("decode", lambda: decode.main(frames=4 if quick else 16, size=size)),
           ("backends", lambda: backend_agreement(128 if quick else 512)),
           ("latency", lambda: latency.main(size=128 if quick else 512, batches=(1, 2) if quick else (1, 2, 4, 8),
                                            repeats=3 if quick else 10)),
           *([("cpu", lambda: cpu.main(frames=1 if quick else 10, repeats=1 if quick else 3))]
             if importlib.util.find_spec("skimage") and importlib.util.find_spec("scipy")  # [train]
             and (cpu.VAL / "images").is_dir() else []),  # the lab's validation frames
           ("stages", lambda: stages.main(frames=2 if quick else 16, size=size, repeats=1 if quick else 3)),
           ("pipeline", lambda: pipeline.main(frames=8 if quick else 64, size=size)),
           ("host", lambda: host.main(frames=32 if quick else 600, size=size, repeats=1 if quick else 3))]
    if importlib.util.find_spec("cv2") and not quick:
        from nucleiscreen.bench import kernels

        out.append(("kernels", lambda: kernels.main()))
    return out


def main(quick: bool = False, out: str | Path = "bench-results", progress: bool = True) -> dict:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for bench.json and bench.md")
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                           "processor": platform.processor() or platform.machine()}, "quick": quick}
    md = [f"# nucleiscreen bench {'--quick' if quick else 'suite'}", "", f"{results['machine']}", ""]
    todo = steps(quick)
    for name, run in tqdm(todo, desc="bench", unit="step", disable=not progress):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            results[name] = run()
        sys.stdout.write(buf.getvalue())
        md += [f"## {name}", "", "```", buf.getvalue().rstrip(), "```", ""]
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench.md").write_text("\n".join(md))
    bad = {k: v["same_model"] for k, v in results["backends"].items()
           if v["precision"] == "fp32" and v["same_model"] < AGREE}
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    if bad:
        raise SystemExit(f"error: FP32 backends disagree with onnxruntime on the bench frames: {bad}")
    return results
