"""Decode speed per core: uncompressed TIFF into a preallocated buffer (GB/s; target >= 2 GB/s) and Cellomics C01
(frames/s), against tifffile.imread and zlib-free numpy reads measured in the same run.

Files are written once to a temporary folder and read warm (from the page cache), so this measures decoding, not the
disk; the screen's storage usually limits first (NVMe ~7 GB/s, parallel file systems 2-5 GB/s per node).

    python -m nucleiscreen.bench.decode
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from nucleiscreen.cellomics import write_c01
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.simulate import synth_frame


def _rate(fn, paths, seconds: float = 2.0) -> float:
    """Frames per second of ``fn(path)`` over ``paths``, repeated for about ``seconds``."""
    for p in paths:
        fn(p)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for p in paths:
            fn(p)
        n += len(paths)
    return n / (time.perf_counter() - t)


def main(frames: int = 16, size: int = 1104) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifs, c01s = [], []
        for i in range(frames):
            img, _ = synth_frame(np.random.default_rng(i), (size, size))
            tifs.append(tmp / f"f{i}.tif")
            tifffile.imwrite(tifs[-1], img)
            c01s.append(tmp / f"f{i}.C01")
            write_c01(c01s[-1], img)
        buf = np.empty((size, size), np.uint16)
        nbytes = buf.nbytes
        ours = _rate(lambda p: read_frame(p, out=buf), tifs)
        reference = _rate(tifffile.imread, tifs)
        c01 = _rate(read_frame, c01s)
    print(f"{frames} frames of {size}x{size} uint16 ({nbytes / 1e6:.2f} MB), warm page cache, one thread")
    print(f"uncompressed TIFF, read_frame into a buffer: {ours:8.0f} frames/s = {ours * nbytes / 1e9:.2f} GB/s "
          f"(target >= 2 GB/s)")
    ref_gbps = reference * nbytes / 1e9
    print(f"uncompressed TIFF, tifffile.imread:          {reference:8.0f} frames/s = {ref_gbps:.2f} GB/s"
          f"  -> read_frame is {ours / reference:.2f}x")
    print(f"Cellomics C01 (zlib), read_frame:            {c01:8.0f} frames/s = {c01 * nbytes / 1e9:.2f} GB/s")
    return {"tiff_gbps": ours * nbytes / 1e9, "tiff_vs_tifffile": ours / reference, "c01_fps": c01}


if __name__ == "__main__":
    main()
