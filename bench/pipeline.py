"""Throughput of the segmentation pipeline on simulated frames, against a sequential reference in the same run.

The reference is the plain loop a script would write: read a frame, normalize it, run the network on it alone,
post-process, next frame. The engine overlaps decoding, batched inference and post-processing on threads. Both run
over the same files with the same model and backend; the ratio is what the engine's design buys on this machine.
Absolute numbers on a shared 2-core machine are noisy; the ratio is the figure to quote.

    nucleiscreen bench --frames 64 --size 1104
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA
from nucleiscreen.simulate import FRAME_SIZE, frame_file_name, plate_name, synth_frame, well_names


def write_frames(folder: Path, frames: int, size: int, seed: int = 0) -> list[Path]:
    """Simulated CX7-named TIFF frames of one plate."""
    plate = plate_name(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    wells = well_names()
    for i in range(frames):
        img, _ = synth_frame(np.random.default_rng([seed, i]), (size, size))
        p = folder / frame_file_name(plate, wells[i // 4 % len(wells)], i % 4 + 4 * (i // (4 * len(wells))), 0,
                                     "tif")
        tifffile.imwrite(p, img)
        paths.append(p)
    return paths


def sequential(paths: list[Path], seg: Segmenter) -> dict[str, float]:
    """The reference loop; returns seconds per stage."""
    t = {"decode": 0.0, "infer": 0.0, "postprocess": 0.0}
    for p in paths:
        t0 = time.perf_counter()
        raw = read_frame(p)
        x = seg.prepare(raw)
        t1 = time.perf_counter()
        (classes,) = seg.classes([x], raw.shape)
        t2 = time.perf_counter()
        seg.measure(classes, raw, objects=False, labels=False, micronucleus_area=DEFAULT_MICRONUCLEUS_AREA)
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["infer"] += t2 - t1
        t["postprocess"] += t3 - t2
    return t


def main(frames: int = 64, size: int = FRAME_SIZE, model: str | None = None, backend: str = "auto",
         batch_size: int | None = None, threads: int | None = None, overrides: dict | None = None) -> dict:
    """``overrides``: post-processing settings (``kernels/postprocess.py``) for both contenders."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        paths = write_frames(folder, frames, size)
        seg = Segmenter(model, backend, threads, overrides)
        sequential(paths[:2], seg)  # warm-up: numba compilation, onnxruntime allocations
        t0 = time.perf_counter()
        stages = sequential(paths, seg)
        t_seq = time.perf_counter() - t0
        opts = SegmentOptions(backend=backend, batch_size=batch_size, threads=threads, progress=False,
                              post=overrides or {})
        t0 = time.perf_counter()
        res = segment([folder], Path(tmp) / "run", model=model, options=opts)
        t_eng = time.perf_counter() - t0
    print(f"{frames} frames of {size}x{size} px, {seg.backend.description}")
    print(f"sequential reference: {frames / t_seq:8.2f} frames/s  (per frame: "
          + ", ".join(f"{k} {1000 * v / frames:.1f} ms" for k, v in stages.items()) + ")")
    print(f"engine (batch {batch_size or seg.backend.preferred_batch}):  {frames / t_eng:8.2f} frames/s  (busy: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(res.busy.items())) + ")")
    print(f"engine / sequential: {t_seq / t_eng:.2f}x")
    return {"sequential_fps": frames / t_seq, "engine_fps": frames / t_eng, "ratio": t_seq / t_eng}


if __name__ == "__main__":
    main()
