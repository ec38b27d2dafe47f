"""``--illum plate``: each plate's illumination function per marker channel, estimated once before the run.

The way the automatic scale is estimated (``engine/scale.py``): ``SAMPLE`` frames spread evenly over the plate in
ImageNumber order (so many wells count and no hit well decides) are read, block-averaged and turned into a flat field
and a background (``kernels/illumination.py``); the function is kept in ``RUN/illum/<plate>/<channel>.tif`` (the
flat field and the background on their coarse grid as two float32 pages, the frame size and ``b0`` in the TIFF's
description: Fiji and napari open it), printed, and read back by resumes, other shards and every worker, so a plate's
frames are all corrected by one function. The marker channels are corrected before they are measured; the nuclei
channel is not (``docs/illumination.md``: the network was trained on uncorrected frames and measured no better on
corrected ones).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import tifffile

from nucleiscreen.engine.channels import frame_path
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.scale import sample_rows
from nucleiscreen.errors import StorageError
from nucleiscreen.kernels.illumination import IlluminationFunction, block_mean, illumination_function

SAMPLE = 128  # frames per plate and channel (docs/illumination.md: 1-3 % from 64 frames up on simulated plates)
MODES = ("plate", "none")


def illum_path(run: Path, plate: str, channel: str) -> Path:
    return run / "illum" / plate / f"{channel}.tif"


def write_function(path: Path, f: IlluminationFunction, frames: int) -> None:
    """The function as a two-page float32 TIFF (flat field, background) with its frame size, ``b0`` and sample size
    in the description; written under a temporary name and renamed (shards may estimate the same plate at once)."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    meta = {"shape": list(f.shape), "b0": f.b0, "frames": frames, "pages": ["flat", "background"]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(tmp) as tif:
            tif.write(f.flat, description=json.dumps(meta), metadata=None)
            tif.write(f.background, metadata=None)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(path, exc) from exc


def read_function(path: Path) -> IlluminationFunction:
    with tifffile.TiffFile(path) as tif:
        flat, background = (page.asarray() for page in tif.pages[:2])
        meta = json.loads(tif.pages[0].description)
    return IlluminationFunction(flat, background, tuple(meta["shape"]), float(meta["b0"]))


def estimate(paths: Sequence[Path], shape: tuple[int, int] | None, threads: int = 1) -> tuple[IlluminationFunction,
                                                                                               int] | None:
    """The illumination function of ``SAMPLE`` readable frames spread over ``paths`` (frames of another size than
    ``shape`` are left out) and how many it used; None when no frame could be read."""
    def grid(path: Path) -> np.ndarray | None:
        try:
            raw = read_frame(path)
        except FrameReadError:
            return None
        return block_mean(raw) if raw.ndim == 2 and (shape is None or raw.shape == tuple(shape)) else None

    picked = [paths[i] for i in sample_rows(len(paths), SAMPLE)]
    with ThreadPoolExecutor(threads) as pool:
        grids = [g for g in pool.map(grid, picked) if g is not None]
    if not grids:
        return None
    frame_shape = tuple(shape) if shape is not None else read_frame(picked[0]).shape
    return illumination_function(np.stack(grids), frame_shape), len(grids)


def plate_functions(run: Path, frames: pl.DataFrame, channels: Sequence[str],
                    shapes: dict[str, tuple[int, int]], threads: int = 1,
                    on_plate: Callable[[str, str, IlluminationFunction, int], None] | None = None) -> int:
    """Estimate the function of every plate and channel of ``frames`` (``numbered_frames``' columns) not yet in
    ``RUN/illum/`` and keep it there; how many were estimated. ``on_plate(plate, channel, function, frames)`` is
    called with each new one."""
    made = 0
    for (plate,), rows in frames.sort("ImageNumber").group_by("Metadata_Plate", maintain_order=True):
        for channel in channels:
            path = illum_path(run, plate, channel)
            if path.exists():
                continue
            records = rows.select(f"PathName_{channel}", f"FileName_{channel}").iter_rows(named=True)
            found = estimate([frame_path(r, channel) for r in records], shapes.get(plate), threads)
            if found is None:
                continue  # no readable frame: the plate's frames fail on their own
            write_function(path, *found)
            made += 1
            if on_plate is not None:
                on_plate(plate, channel, *found)
    return made


class Illumination:
    """The functions of a run folder, loaded on first use and kept at the frames' size for the plates in hand
    (a worker goes plate by plate): ``for_frame(plate, channel)`` gives (background, 1 / flat, b0) or None."""

    def __init__(self, run: Path | None, keep: int = 4):
        self.run, self.keep = run, keep
        self._cache: dict[tuple[str, str], tuple | None] = {}
        self._lock = threading.Lock()

    def for_frame(self, plate: str, channel: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        key = (plate, channel)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        path = illum_path(self.run, plate, channel) if self.run is not None else None
        value = None
        if path is not None and path.exists():
            f = read_function(path)
            value = (*f.at_frame_size(), f.b0)
        with self._lock:
            if len(self._cache) >= self.keep * 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = value
        return value
