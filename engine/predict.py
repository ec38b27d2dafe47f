"""``nucleiscreen predict``: segment individual images into instance-label TIFFs (napari/Fiji open them), with the
per-nucleus measurements of each image beside its labels as ``<stem>_nuclei.csv`` (CellProfiler column names).

Each image goes through the same ``Segmenter`` as a screen's frames (``Segmenter.load``'s checks, the model card's
post-processing); an image that cannot be read or segmented is reported and skipped, the others are still written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from nucleiscreen.engine.channels import NUCLEI, Channels, frame_path
from nucleiscreen.engine.discover import discover, discover_images
from nucleiscreen.engine.pipeline import read_marker
from nucleiscreen.engine.readers import FrameReadError
from nucleiscreen.engine.runfolder import write_labels
from nucleiscreen.engine.scale import KEEP_IMAGE, ScaleEstimate, labels_at_scale
from nucleiscreen.engine.segmenter import Frame, Segmenter
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.intensity import object_intensities
from nucleiscreen.kernels.measure import measure


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)  # the label images
    failed: list[tuple[Path, str]] = field(default_factory=list)  # the images that could not be segmented, and why


def predict(images, out: str | Path, model: str | Path | None = None, backend: str = "auto",
            threads: int | None = None, batch_size: int | None = None, progress: bool = False,
            pixel_size: float | str | None = None, overrides: dict | None = None,
            on_scale: Callable[[str, ScaleEstimate], None] | None = None,
            on_error: Callable[[Path, str], None] | None = None, channels: Channels | None = None,
            pattern: str = "auto") -> PredictResult:
    """Write ``out/<stem>_labels.tif`` (uint16, or uint32 past 65,535 objects) and ``out/<stem>_nuclei.csv`` for every
    image. ``pixel_size="auto"``: each image at its own scale, estimated from its nuclei and kept at the model's within
    ``KEEP_IMAGE`` (``engine/scale.py``; images of a screen share one scale per plate in ``segment`` instead), given
    to ``on_scale(name, estimate)``; the estimate's own segmentation is the result when the scale is kept.
    ``overrides``: post-processing settings (``kernels/postprocess.py``). An image that fails goes to
    ``on_error(path, reason)`` and the result's ``failed``. ``channels`` (``--channels``, named): the images are a
    screen's fields, grouped by their names (``pattern``, as ``segment``); the nuclei channel is segmented and every
    channel measured in its nuclei (``Intensity_<feature>_<channel>`` columns of the CSV, raw values: no
    illumination correction for single images); a field whose marker frame cannot be read fails."""
    fields = {}
    if channels is not None and channels.named:
        found = discover(images, pattern, channels=channels)
        for rec in found.frames.iter_rows(named=True):
            fields[frame_path(rec, channels.nuclei)] = {m: frame_path(rec, m) for m in channels.markers}
        paths = sorted(fields)
    else:
        paths = discover_images(images)
    stems = defaultdict(list)
    for p in paths:
        stems[p.stem].append(p)
    clashes = [v for v in stems.values() if len(v) > 1]
    if clashes:
        raise UserError(f"two inputs would write the same output name: {clashes[0][0]} and {clashes[0][1]}")
    auto = pixel_size == "auto"
    seg = Segmenter(model, backend, threads, overrides, None if auto else pixel_size)
    batch_size = batch_size or seg.backend.preferred_batch
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PredictResult()

    def fail(path: Path, reason: str) -> None:
        result.failed.append((path, reason))
        if on_error is not None:
            on_error(path, reason)

    def write(path: Path, labels: np.ndarray, raw: np.ndarray) -> None:
        table = measure(labels, raw, channel=channels.nuclei if channels is not None else NUCLEI)
        markers = {}
        for name, marker in fields.get(path, {}).items():
            try:
                markers[name] = read_marker(marker, name, raw.shape)
            except FrameReadError as exc:
                fail(path, str(exc))
                return
        n = int(labels.max(initial=0))
        for name, image in markers.items():
            stats = object_intensities(labels, image, n).features()
            table = table.with_columns(pl.Series(f"Intensity_{f}_{name}", v[table["ObjectNumber"].to_numpy() - 1])
                                       for f, v in stats.items())
        target = out / f"{path.stem}_labels.tif"
        write_labels(target, labels)
        table.write_csv(out / f"{path.stem}_nuclei.csv")
        result.written.append(target)

    with tqdm(total=len(paths), unit="image", desc="predict", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            loaded: list[tuple[Path, Frame]] = []
            for p in paths[start:start + batch_size]:
                try:
                    loaded.append((p, seg.load(p)))
                except FrameReadError as exc:
                    fail(p, str(exc))
                    bar.update()
            if auto:
                for p, frame in loaded:
                    try:
                        estimate, (labels,) = labels_at_scale(seg, [frame.raw], KEEP_IMAGE)
                    except Exception as exc:  # one image's failure must not stop the others
                        fail(p, f"{type(exc).__name__}: {exc}")
                    else:
                        if on_scale is not None:
                            on_scale(p.name, estimate)
                        write(p, labels, frame.raw)
                    bar.update()
                continue
            groups = defaultdict(list)  # same-shape inputs share a batch
            for p, frame in loaded:
                groups[frame.input.shape, frame.input.dtype, frame.raw.shape].append((p, frame))
            for items in groups.values():
                try:
                    classes = seg.classes([f.input for _, f in items], items[0][1].raw.shape)
                    labels = [seg.instances(c, f.raw, f.rescale) for (_, f), c in zip(items, classes)]
                except Exception as exc:
                    for p, _ in items:
                        fail(p, f"{type(exc).__name__}: {exc}")
                else:
                    for (p, frame), lab in zip(items, labels):
                        write(p, lab, frame.raw)
                bar.update(len(items))
    return result
