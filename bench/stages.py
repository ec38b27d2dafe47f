"""Where a frame's time goes: every stage of the engine's path on one core, and the whole run end to end.

Simulated CX7 frames are written as uncompressed TIFF, deflate TIFF and Cellomics C01, then each stage is timed on
its own, frame after frame, ``repeats`` times (each frame's best time counts; other tenants only ever slow a run down):

- decode, per format (``read_frame``);
- QC: the histogram, the frame checks and the quality values (``Segmenter.load`` does these in one pass);
- normalization (the network input);
- inference, per shipped model (onnxruntime, one thread);
- post-processing: the fused kernels, image table only and with the object table (``Segmenter.measure``);
- write: the frame's label TIFF, and its object rows as Parquet.

End to end, ``segment`` runs the TIFF frames with the default CPU model; its process CPU time (all its threads, the
run's start included: loading the model, the manifest) per frame is set against the sum of the stages that path runs.
The difference is what the engine's threads, queues and bookkeeping cost, plus the noise of a single run (on a shared
2-core machine about ±15 % at 16 frames; the stages are best-of-``repeats``).

    nucleiscreen bench stages [--frames 8] [--size 1104]   (part of ``nucleiscreen bench suite``)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numba
import numpy as np
import tifffile

from nucleiscreen.bench.latency import cpu_variants
from nucleiscreen.bench.pipeline import write_frames
from nucleiscreen.cellomics import write_c01
from nucleiscreen.engine.backends import CPU_MODEL
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.runfolder import write_labels
from nucleiscreen.engine.segmenter import Segmenter, check
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA
from nucleiscreen.kernels.normalize import histogram
from nucleiscreen.kernels.quality import frame_quality
from nucleiscreen.simulate import FRAME_SIZE


def _best(stages: dict[str, Callable[[int], object]], n: int, repeats: int) -> dict[str, float]:
    """Mean over the ``n`` frames of each stage's best time (s) over ``repeats`` rounds, the stages interleaved."""
    best = {name: [np.inf] * n for name in stages}
    for _ in range(repeats):
        for i in range(n):
            for name, run in stages.items():
                t = time.perf_counter()
                run(i)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    return {name: float(np.mean(v)) for name, v in best.items()}


def main(frames: int = 8, size: int = FRAME_SIZE, repeats: int = 3) -> dict:
    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifs = write_frames(tmp / "tif", frames, size)
        raws = [read_frame(p) for p in tifs]
        deflate, c01 = tmp / "deflate", tmp / "c01"
        deflate.mkdir()
        c01.mkdir()
        for i, raw in enumerate(raws):
            tifffile.imwrite(deflate / f"{i}.tif", raw, compression="zlib")
            write_c01(c01 / f"{i}.C01", raw)
        segs = {name: Segmenter(model, backend, threads=1, pixel_size=None)
                for name, (model, backend) in cpu_variants().items() if backend != "torch"}
        default = f"onnxruntime {CPU_MODEL}"  # what auto runs on a CPU
        seg = segs[default]
        hists = [histogram(r) for r in raws]
        inputs = [seg.prepare(r, h) for r, h in zip(raws, hists)]
        maps = [seg.classes([x], r.shape)[0] for x, r in zip(inputs, raws)]
        measured = [seg.measure(m, r, objects=True, labels=True, micronucleus_area=DEFAULT_MICRONUCLEUS_AREA)
                    for m, r in zip(maps, raws)]

        def qc(i):
            check(raws[i], hists[i], raws[i].shape, "frame")
            return frame_quality(raws[i], hists[i]), histogram(raws[i])

        stages = {
            "decode: TIFF, uncompressed": lambda i: read_frame(tifs[i]),
            "decode: TIFF, deflate": lambda i: read_frame(deflate / f"{i}.tif"),
            "decode: C01": lambda i: read_frame(c01 / f"{i}.C01"),
            "QC: histogram, checks, quality": qc,
            "normalization": lambda i: seg.prepare(raws[i], hists[i]),
            **{f"inference: {name}": partial(lambda s, i: s.classes([inputs[i]], raws[i].shape), s)
               for name, s in segs.items()},
            "post-processing: image table": lambda i: seg.measure(maps[i], raws[i], objects=False, labels=False,
                                                                  micronucleus_area=DEFAULT_MICRONUCLEUS_AREA),
            "post-processing: + object table": lambda i: seg.measure(maps[i], raws[i], objects=True, labels=False,
                                                                     micronucleus_area=DEFAULT_MICRONUCLEUS_AREA),
            "write: label TIFF": lambda i: write_labels(tmp / "labels" / f"{i}.tif", measured[i][0]),
            "write: object rows (Parquet)": lambda i: measured[i][2].write_parquet(tmp / f"objects{i}.parquet"),
        }
        (tmp / "labels").mkdir()
        seconds = _best(stages, frames, repeats)
        path = ["decode: TIFF, uncompressed", "QC: histogram, checks, quality", "normalization",
                f"inference: {default}", "post-processing: image table"]
        total = sum(seconds[k] for k in path)
        cpu0 = time.process_time()
        segment([tmp / "tif"], tmp / "run", model=CPU_MODEL,
                options=SegmentOptions(backend="onnxruntime", threads=1, progress=False, pixel_size=None))
        engine_cpu = (time.process_time() - cpu0) / frames
    print(f"stages of one {size}x{size} frame on one core, best of {repeats} over {frames} simulated frames "
          f"(* the default CPU path: {default})")
    print("| stage | ms/frame | share of the path |\n|---|---|---|")
    for name, s in seconds.items():
        mark = "*" if name in path else ""
        share = f"{100 * s / total:.1f} %" if name in path else ""
        print(f"| {mark}{name} | {1e3 * s:.2f} | {share} |")
    print(f"| sum of the * stages | {1e3 * total:.2f} | 100 % |")
    print(f"| end to end: `segment`, process CPU time per frame | {1e3 * engine_cpu:.2f} | "
          f"{100 * engine_cpu / total:.1f} % |")
    return {"ms": {k: 1e3 * v for k, v in seconds.items()}, "path_ms": 1e3 * total, "engine_cpu_ms": 1e3 * engine_cpu}


if __name__ == "__main__":
    main()
