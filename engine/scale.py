"""Automatic scale (``--pixel-size auto``): resize a plate's frames so that its nuclei have the size the model was
trained on.

Another objective, binning or camera changes the nuclei's size in pixels, and a network trained on nuclei ~45 px across
segments nuclei of half that size poorly; users rarely know their frames' pixel size at the model's scale. The
estimate: segment a sample of the plate's frames (``SAMPLE`` frames spread evenly over the plate in ImageNumber order,
so several wells count and no single hit well decides), take the typical nucleus area (``typical_area`` of
``kernels/measure.py``: the median area of the whole nuclei, off the frame border and at least 0.3 x the median of all
objects, so micronuclei and fragments do not count) and compare it with the model's own typical area on its training
frames (the card's ``nucleus_area_px``): ``scale = sqrt(model area / plate area)``, the factor by which frames are
resized before the network. The first round runs at the model's scale; the next ones at the last estimate, since a
network measures nuclei of its training size best; the rounds stop when the estimate moves by less than
``CONVERGED``. An estimate within ``KEEP`` of 1 keeps the model's scale (``KEEP_IMAGE`` for one image's, which varies
more). Every frame of a plate is treated alike (one scale per plate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nucleiscreen.engine.channels import NUCLEI, path_columns
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.segmenter import check
from nucleiscreen.kernels.measure import typical_area
from nucleiscreen.kernels.normalize import histogram

SAMPLE = 8  # frames per plate
MIN_NUCLEI = 20  # fewer whole nuclei in the sample: too few to tell, the model's scale is kept
ROUNDS = 3
CONVERGED = 0.03
KEEP = 0.05  # a plate's estimate (8 frames, several wells)
KEEP_IMAGE = 0.15  # one image's: the nuclei of one frame differ from the plate's typical size by up to ~10 %
LIMITS = (0.25, 4.0)  # nuclei 4x smaller or larger than the model's at most


@dataclass(frozen=True)
class ScaleEstimate:
    scale: float  # frames are resized by this before inference (1.0: at the model's scale)
    nucleus_area: float | None  # the plate's typical nucleus area in frame pixels (None: not measured)
    nuclei: int  # whole nuclei it was measured on
    note: str  # how it was decided, for the manifest and the console

    def as_dict(self) -> dict:
        return {"scale": round(self.scale, 4), "nucleus_area_px": self.nucleus_area, "nuclei": self.nuclei,
                "note": self.note}


def estimate_scale(segment_at: Callable[[float], Sequence[np.ndarray]], model_area: float | None,
                   keep: float = KEEP) -> ScaleEstimate:
    """The scale of a sample of frames: ``segment_at(scale)`` gives their label images with the frames resized by
    ``scale`` for inference (labels at the frames' own size); ``model_area``: the card's ``nucleus_area_px``; an
    estimate within ``keep`` of 1 keeps the model's scale."""
    if not model_area:
        return ScaleEstimate(1.0, None, 0, "the model card has no nucleus_area_px: the model's scale was kept "
                                          "(give --pixel-size)")
    scale, area, n = 1.0, None, 0
    for _ in range(ROUNDS):
        area, n = typical_area(segment_at(scale))
        if area is None or n < MIN_NUCLEI:
            return ScaleEstimate(1.0, area, n, f"{n} whole nuclei in the sample, too few to tell: the model's scale "
                                               "was kept")
        new = float(np.clip(np.sqrt(model_area / area), *LIMITS))
        moved = abs(new / scale - 1)
        scale = new
        if moved < CONVERGED:
            break
    if abs(scale - 1) <= keep:
        return ScaleEstimate(1.0, area, n, f"{scale:.3f}, within {keep:.0%} of the model's: kept")
    return ScaleEstimate(scale, area, n, f"nuclei {1 / scale:.2f}x the model's size: frames resized by {scale:.3f}")


def sample_rows(n: int, sample: int = SAMPLE) -> list[int]:
    """``sample`` row indices spread evenly over ``n`` rows (all of them when fewer)."""
    k = min(n, sample)
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


def plate_scales(seg, frames: pl.DataFrame, known: dict[str, dict] | None = None,
                 on_plate: Callable[[str, ScaleEstimate], None] | None = None,
                 channel: str = NUCLEI) -> dict[str, ScaleEstimate]:
    """One ``ScaleEstimate`` per plate of ``frames`` (``numbered_frames``' columns) for the Segmenter ``seg``
    (``sample_scale`` of the plate's frames of the nuclei ``channel``); ``known``: estimates made before (a resumed
    run's, ``as_dict`` form), kept as they are so that every frame of a plate is treated alike; ``on_plate`` is
    called with each new one."""
    out = {plate: ScaleEstimate(d["scale"], d.get("nucleus_area_px"), d.get("nuclei", 0), d.get("note", ""))
           for plate, d in (known or {}).items()}
    for (plate,), rows in frames.sort("ImageNumber").group_by("Metadata_Plate", maintain_order=True):
        if plate not in out:
            out[plate] = sample_scale(seg, [Path(p) / n for p, n in rows.select(path_columns(channel)).iter_rows()])
            if on_plate is not None:
                on_plate(plate, out[plate])
    return out


def sample_scale(seg, paths: Sequence[Path]) -> ScaleEstimate:
    """The ``ScaleEstimate`` of ``SAMPLE`` readable frames spread evenly over ``paths`` (in their order), segmented
    with the Segmenter ``seg`` at trial scales."""
    sample = []
    for i in sample_rows(len(paths), 4 * SAMPLE):  # spare frames for unreadable ones
        try:
            raw = read_frame(paths[i])
            check(raw, histogram(raw), None, paths[i].name)
        except FrameReadError:
            continue
        sample.append(raw)
    return frames_scale(seg, [sample[i] for i in sample_rows(len(sample))])


def frames_scale(seg, frames: Sequence[np.ndarray], keep: float = KEEP) -> ScaleEstimate:
    """The ``ScaleEstimate`` of some raw frames, segmented with the Segmenter ``seg`` at trial scales."""
    return labels_at_scale(seg, frames, keep, labels=False)[0]


def labels_at_scale(seg, frames: Sequence[np.ndarray], keep: float = KEEP,
                    labels: bool = True) -> tuple[ScaleEstimate, list[np.ndarray] | None]:
    """The ``ScaleEstimate`` of some raw frames and (``labels``) their nuclei segmented at it: the labels of the
    estimate's own pass at that scale when there was one (always when the model's scale is kept), so a frame is not
    segmented twice at one scale."""
    done: dict[float, list[np.ndarray]] = {}

    def segment_at(scale: float) -> list[np.ndarray]:
        if scale not in done:
            s = seg.at_scale(scale)
            done[scale] = [s.instances(s.classes([s.prepare(raw)], raw.shape)[0], raw) for raw in frames]
        return done[scale]

    estimate = estimate_scale(segment_at, seg.info.card.get("nucleus_area_px"), keep)
    return estimate, segment_at(estimate.scale) if labels else None
