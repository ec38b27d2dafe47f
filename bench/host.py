"""The host's ceiling: how many frames per second the engine's host side (discovery, reading, histogram and quality,
post-processing with the object filter, writing) sustains per core when the network costs nothing.

A GPU computes the shipped U-Net for thousands of 1104^2 frames a second; what remains is host work, and a node's
cores must keep up with it. Here the network is replaced by a *replay* backend that takes raw frames, as the torch
backend does on CUDA, and returns the class map the shipped model computed for each distinct frame beforehand
(computed once with onnxruntime, so the post-processing sees the network's real output, micronuclei and all).
``segment`` runs over ``--frames`` 1104^2 uint16 TIFFs (copies of a few distinct simulated frames) in a fresh process
pinned to 1 core and then to all cores, in summary mode and with ``--objects``; it prints frames/s, frames/s per core
and the scaling from 1 core to all (1.0 = linear). Each configuration runs ``repeats`` times, interleaved, and the
best run counts: on a shared machine the other tenants only ever slow a run down.

    nucleiscreen bench host [--frames 600] [--size 1104] [--channels 3]

With ``--channels 3`` every field has the Hoechst frame and the simulator's two marker frames, all three read and
measured in every nucleus and the markers illumination-corrected (``segment --channels DNA=d0,Lyso=d1,Cell=d2``):
the rates are fields/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from nucleiscreen.engine.backends import SyncBackend
from nucleiscreen.errors import UserError
from nucleiscreen.simulate import FRAME_SIZE, frame_file_name, plate_name, synth_frame, synth_markers, well_names


class ReplayBackend(SyncBackend):
    """A backend that costs nothing: raw frames in (``submit_raw``, as torch on CUDA), the class map recorded for
    each frame out, found by the frame's first row (the frames of a benchmark differ there). The class maps are
    stacked into one batch array, as a real backend's result is."""

    name = "replay"
    description = "replay (class maps recorded beforehand; no network)"
    preferred_batch = 16
    raw_input = True

    def __init__(self, maps: dict[bytes, np.ndarray]):
        self.maps = maps

    def submit_raw(self, frames) -> np.ndarray:
        return np.stack([self.maps[f[0].tobytes()] for f in frames])

    def collect_raw(self, token: np.ndarray) -> np.ndarray:
        return token

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the replay backend takes raw frames only")


def write_frames(folder: Path, frames: int, size: int, distinct: int = 16, channels: int = 1) -> list[np.ndarray]:
    """``frames`` CX7-named fields of uint16 TIFFs over 384-well plates (16 fields a well), copies of ``distinct``
    simulated fields (``channels`` 3: the Hoechst frame d0 and the simulator's two markers d1, d2); returns the
    distinct Hoechst frames."""
    fields = []
    for i in range(distinct):
        rng, cells = np.random.default_rng([7, i]), []
        image, labels = synth_frame(rng, (size, size), cells=cells if channels > 1 else None)
        markers = synth_markers(rng, labels, cells) if channels > 1 else None
        fields.append((image, *((markers.lyso, markers.cell)[:channels - 1] if markers else ())))
    wells = well_names()
    for i in range(frames):
        plate = plate_name(i // (384 * 16))
        (folder / plate).mkdir(parents=True, exist_ok=True)
        for channel, frame in enumerate(fields[i % distinct]):
            tifffile.imwrite(folder / plate / frame_file_name(plate, wells[(i // 16) % 384], i % 16, channel, "tif"),
                             frame)
    return [f[0] for f in fields]


def record_maps(images: list[np.ndarray], path: Path) -> None:
    """The shipped model's class map of each distinct frame (onnxruntime), saved for the timed processes."""
    from nucleiscreen.engine.segmenter import Segmenter

    seg = Segmenter(backend="onnxruntime")
    maps = [seg.classes([seg.prepare(img)], img.shape)[0] for img in images]
    np.savez(path, frames=np.stack([img[0] for img in images]), maps=np.stack(maps))


_CHILD = """
import json, os, sys, time, tempfile
import numpy as np
os.sched_setaffinity(0, set(json.loads(sys.argv[4])))
import numba
numba.set_num_threads(1)  # the kernels are single-threaded; parallelism comes from the pool's threads
from nucleiscreen.bench.host import ReplayBackend
from nucleiscreen.engine.channels import Channels
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.segmenter import Segmenter
rec = np.load(sys.argv[2])
maps = {f.tobytes(): m for f, m in zip(rec["frames"], rec["maps"])}
threads, objects = len(json.loads(sys.argv[4])), sys.argv[5] == "1"
channels = Channels.parse(sys.argv[6] or None)
seg = Segmenter(backend=ReplayBackend(maps))
opts = SegmentOptions(threads=threads, objects=objects, progress=False, channels=channels)
segment([sys.argv[1]], os.path.join(sys.argv[3], "warm"), options=opts, segmenter=seg)  # numba caches, imports
res = segment([sys.argv[1]], os.path.join(sys.argv[3], "timed"), options=opts, segmenter=seg)
print(json.dumps({"frames": res.frames, "failed": res.failed, "seconds": res.seconds, "busy": res.busy}))
"""


CHANNELS = {1: "", 3: "DNA=d0,Lyso=d1,Cell=d2"}  # --channels of the timed runs


def _run(src: Path, maps: Path, tmp: Path, cpus: list[int], objects: bool, channels: int) -> dict:
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(maps), work, json.dumps(cpus),
                              "1" if objects else "0", CHANNELS[channels]], check=True, capture_output=True,
                             text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} frames failed in the host benchmark")
    return result


def main(frames: int = 600, size: int = FRAME_SIZE, cores: int | None = None, repeats: int = 3,
         channels: int = 1) -> dict:
    """``channels`` 3: fields of three channels, every one read and measured (``--channels DNA=d0,Lyso=d1,Cell=d2``,
    the markers illumination-corrected); the rates are then fields/s."""
    if channels not in CHANNELS:
        raise UserError(f"bench host --channels takes {' or '.join(map(str, CHANNELS))}, not {channels}")
    available = sorted(os.sched_getaffinity(0))
    cores = min(cores or len(available), len(available))
    unit = "frames" if channels == 1 else "fields"
    results: dict = {"frames": frames, "size": size, "cores": cores, "channels": channels, "unit": unit, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "frames"
        images = write_frames(src, frames, size, channels=channels)
        record_maps(images, Path(tmp) / "maps.npz")
        print(f"host ceiling: {frames} {unit} of {size}x{size} px ({channels} channel(s), uint16 TIFF), replay "
              f"backend, {cores} of {len(available)} cores, best of {repeats}")
        for mode, objects in (("summary", False), ("objects", True)):
            runs = [(_run(src, Path(tmp) / "maps.npz", Path(tmp), available[:1], objects, channels),
                     _run(src, Path(tmp) / "maps.npz", Path(tmp), available[:cores], objects, channels))
                    for _ in range(repeats)]
            one = min((r[0] for r in runs), key=lambda r: r["seconds"])
            every = min((r[1] for r in runs), key=lambda r: r["seconds"])
            fps1, fpsn = frames / one["seconds"], frames / every["seconds"]
            scaling = fpsn / (cores * fps1)
            results["modes"][mode] = {"fps_1_core": fps1, f"fps_{cores}_cores": fpsn,
                                      "fps_per_core": fpsn / cores, "scaling": scaling,
                                      "busy_1_core": one["busy"], "busy_all_cores": every["busy"]}
            busy = ", ".join(f"{k} {1000 * v / frames:.2f}" for k, v in sorted(one["busy"].items()))
            print(f"  {mode:8s} 1 core: {fps1:7.1f} {unit}/s | {cores} cores: {fpsn:7.1f} {unit}/s = "
                  f"{fpsn / cores:6.1f} per core | scaling {scaling:.2f} of linear "
                  f"(1 core busy ms per {unit[:-1]}: {busy})")
    return results


if __name__ == "__main__":
    main()
