"""``nucleiscreen predict``: segment individual images into instance-label TIFFs (napari/Fiji open them), with the
per-nucleus measurements of each image beside its labels as ``<stem>_nuclei.csv`` (CellProfiler column names)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from nucleiscreen.engine.discover import discover_images
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.runfolder import write_labels
from nucleiscreen.engine.scale import KEEP_IMAGE, frames_scale
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import measure


def predict(images, out: str | Path, model: str | Path | None = None, backend: str = "auto",
            threads: int | None = None, batch_size: int | None = None, progress: bool = False,
            pixel_size: float | str | None = None, min_contrast: float | None = None,
            min_area: int | None = None, min_edge_area: int | None = None,
            grow_area: int | None = None, on_scale=None) -> list[Path]:
    """Write ``out/<stem>_labels.tif`` (uint16, or uint32 past 65,535 objects) and ``out/<stem>_nuclei.csv`` for every
    image; returns the label paths. ``pixel_size="auto"``: each image at its own scale, estimated from its nuclei
    and kept at the model's within ``KEEP_IMAGE`` (``engine/scale.py``; images of a screen share one scale per plate in
    ``segment`` instead) and given to ``on_scale(name, estimate)``."""
    paths = discover_images(images)
    stems = defaultdict(list)
    for p in paths:
        stems[p.stem].append(p)
    clashes = [v for v in stems.values() if len(v) > 1]
    if clashes:
        raise UserError(f"two inputs would write the same output name: {clashes[0][0]} and {clashes[0][1]}")
    auto = pixel_size == "auto"
    seg = Segmenter(model, backend, threads, min_area=min_area, pixel_size=None if auto else pixel_size,
                    min_contrast=min_contrast, min_edge_area=min_edge_area, grow_area=grow_area)
    batch_size = batch_size or seg.backend.preferred_batch
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=len(paths), unit="image", desc="predict", disable=not progress)
    for start in range(0, len(paths), batch_size):
        group = defaultdict(list)  # same-shape images at one scale share a batch
        for p in paths[start:start + batch_size]:
            try:
                raw = read_frame(p)
            except FrameReadError as exc:
                raise UserError(str(exc)) from None
            at = seg
            if auto:
                estimate = frames_scale(seg, [raw], KEEP_IMAGE)
                at = seg.at_scale(estimate.scale)
                if on_scale is not None:
                    on_scale(p.name, estimate)
            group[raw.shape, at.scale].append((p, raw, at))
        for (shape, _), items in group.items():
            at = items[0][2]
            classes = at.classes([at.prepare(raw) for _, raw, _ in items], shape)
            for (p, raw, _), cls in zip(items, classes):
                labels = at.instances(cls, raw)
                target = out / f"{p.stem}_labels.tif"
                write_labels(target, labels)
                measure(labels, raw).write_csv(out / f"{p.stem}_nuclei.csv")
                written.append(target)
                bar.update()
    bar.close()
    return written
