"""Does the engine keep its bottleneck fed, and does its memory stay flat as a screen grows?

Runs ``nucleiscreen segment`` in a fresh process over 1,000 and then 10,000 small simulated frames (96 x 96 px by
default, where the network is cheap and decoding, post-processing and writing weigh most) and reports, for each: wall
time, frames/s, each stage's busy time as a share of the wall time (decode and post-processing run on worker threads,
so their share can exceed 100 %), and the process's peak RSS. The 10k/1k RSS ratio should be ~1.

    python -m nucleiscreen.bench.scaling
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
from nucleiscreen.engine.pipeline import SegmentOptions, segment
res = segment([sys.argv[1]], sys.argv[2], options=SegmentOptions(progress=False))
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


def run(frames: int, size: int, tmp: Path) -> dict:
    src = tmp / f"frames{frames}"
    write_screen(src, frames, size)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(tmp / f"run{frames}")], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - t
    return result


def main(sizes: tuple[int, ...] = (1000, 10000), size: int = 96) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run(n, size, Path(tmp))
            results[n] = r
            shares = ", ".join(f"{k} {100 * v / r['seconds']:.0f}%" for k, v in sorted(r["busy"].items()))
            print(f"{n:6d} frames of {size}x{size}: {r['seconds']:6.1f} s in segment, "
                  f"{n / r['seconds']:7.1f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB; busy share of wall: {shares}")
    if len(sizes) == 2:
        a, b = (results[n]["peak_rss_mb"] for n in sizes)
        print(f"peak RSS {sizes[1]} / {sizes[0]} frames: {b / a:.2f}x (flat is 1.0; target within 10 %)")
    return results


if __name__ == "__main__":
    main()
