"""Inference latency per backend and batch size on this machine: p50 and p95 of ``repeats`` timed calls of the
backend alone (normalized input in, class maps out), and frames/s at the p50. The backends installed here run the
shipped models on onnxruntime and the FP32 one on torch (when installed); CUDA backends are ``bench gpu``'s.

    python -m nucleiscreen.bench.latency   (part of ``nucleiscreen bench suite``)
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.simulate import synth_frame


def cpu_variants() -> dict[str, tuple[str, str]]:
    """The (shipped model, backend) pairs this machine runs on the CPU, named "backend model": every shipped model on
    onnxruntime, the FP32 model on torch when torch and onnx are installed. Not OpenVINO: once loaded it slows the
    other runtimes of its process (``engine/backends/openvino.py``)."""
    from nucleiscreen.engine.model import shipped_models

    models = sorted(shipped_models(), key=lambda n: (n.removesuffix("-int8"), n.endswith("-int8")))
    variants = {f"onnxruntime {model}": (model, "onnxruntime") for model in models}
    if importlib.util.find_spec("torch") and importlib.util.find_spec("onnx"):
        variants["torch unet-small"] = ("unet-small", "torch")
    return variants


def main(size: int = 512, batches: tuple[int, ...] = (1, 2, 4), repeats: int = 10, threads: int = 1) -> dict:
    variants = cpu_variants()
    raw = synth_frame(np.random.default_rng(5), (size, size))[0]
    results = {}
    print(f"inference alone, {size}x{size} frames, {threads} thread(s), {repeats} calls per batch size")
    print("| backend | batch | p50 ms | p95 ms | frames/s |\n|---|---|---|---|---|")
    for name, (model, backend) in variants.items():
        seg = Segmenter(model, backend, threads=threads, pixel_size=None)
        x = seg.prepare(raw)
        for batch in batches:
            inputs = [x] * batch
            seg.classes(inputs)  # warm-up: allocations, the torch executor's first pass
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                seg.classes(inputs)
                times.append(time.perf_counter() - t)
            p50, p95 = np.percentile(times, [50, 95])
            results[f"{name}, batch {batch}"] = {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "fps": batch / p50}
            print(f"| {name} | {batch} | {1e3 * p50:.1f} | {1e3 * p95:.1f} | {batch / p50:.1f} |")
    return results


if __name__ == "__main__":
    main()
