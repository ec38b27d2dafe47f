"""The frames the report shows for its hits: which ones (:func:`example_frames`, a polars query over the image
table) and their thumbnails (:func:`frame_thumbnail`, a JPEG with the nuclei outlined).
"""

from __future__ import annotations

import math
from pathlib import Path

import imagecodecs
import numpy as np
import polars as pl
import tifffile

from nucleiscreen.engine.channels import NUCLEI, path_columns
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.kernels.normalize import normalize

THUMBNAIL = 256
"""Side of a frame thumbnail in the report, px."""
THUMBNAIL_CROP = 512
"""Thumbnails show the centre ``THUMBNAIL_CROP`` px of a frame (the whole of a smaller one), so nuclei keep
enough pixels to judge their size and shape; at the CX7's 0.65 µm/px that is 333 µm."""
OUTLINE_RGB = (255, 210, 0)
JPEG_QUALITY = 88

REPORT_HITS = 20
"""Hits shown with frames (the strongest count loss first); the hit table lists them all."""
FRAMES_PER_HIT = 2


def example_frames(images: pl.DataFrame | pl.LazyFrame, wells: pl.DataFrame, hits: pl.DataFrame,
                   run_dir: str | Path | None = None, *, per_hit: int = FRAMES_PER_HIT,
                   max_hits: int = REPORT_HITS, exclude: pl.Expr | None = None,
                   channel: str = NUCLEI) -> pl.DataFrame:
    """Choose, for each hit, a few frames of its wells, each paired with a reference frame of the same plate.

    For each of the first ``max_hits`` hits (in the order of ``hits``), its ``per_hit`` sample wells whose
    count FC is closest to the gene's (ties: plate, well). For each plate involved, the reference well whose
    count FC is closest to 1. For each chosen well, its most typical frame: the analysed frame whose
    ``Count_Nuclei`` is closest to the well's nuclei per field (ties: the lowest ``Metadata_Site``).

    Parameters
    ----------
    images
        The image table (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Count_Nuclei``, and the
        nuclei ``channel``'s ``PathName_``, ``FileName_`` columns).
    wells
        From :func:`~nucleiscreen.engine.screen.plates.normalize_plates`.
    hits
        From :func:`~nucleiscreen.engine.screen.hits.call_hits`.
    run_dir
        The run folder; label images are looked for at ``RUN/labels/plate=<plate>/<stem>_labels.tif``.
    per_hit, max_hits
        How many wells per hit, and how many hits.
    exclude
        The frame exclusion used for the wells (excluded frames are never shown).
    channel
        The run's nuclei channel: its frames are shown.

    Returns
    -------
    polars.DataFrame
        One row per shown hit well: ``gene_symbol``, ``hit_rules``, ``gene_count_fc``, ``gene_area_fc``,
        then for the hit well and for its plate's reference well (prefix ``ref_``): ``plate``, ``well``,
        ``site``, ``control_name`` (reference only), ``count_fc``, ``area_fc``, ``nuclei`` (of the frame),
        ``frame`` (path) and ``labels`` (path, null when the run has no label image for it). Hits without an
        analysed well have no row.
    """
    empty_well = pl.DataFrame(schema={"plate": pl.String, "well": pl.String})
    shown = hits.head(max_hits).select(
        "gene_symbol", "hit_rules", gene_count_fc="count_fc", gene_area_fc="area_fc", _order=pl.int_range(pl.len()),
    )
    hit_wells = (
        wells.filter((pl.col("role") == "sample") & pl.col("count_fc").is_not_null())
        .join(shown, on="gene_symbol")
        .with_columns(_d=(pl.col("count_fc") - pl.col("gene_count_fc")).abs())
        .sort("_order", "_d", "plate", "well")
        .group_by("gene_symbol", maintain_order=True).head(per_hit)
    )
    refs = (
        wells.filter(pl.col("is_reference") & pl.col("count_fc").is_not_null())
        .join(hit_wells.select("plate").unique(), on="plate")
        .with_columns(_d=(pl.col("count_fc") - 1).abs())
        .sort("plate", "_d", "well")
        .group_by("plate", maintain_order=True).first()
    )
    chosen = pl.concat([hit_wells.select("plate", "well"), refs.select("plate", "well"), empty_well]).unique()
    frames = _typical_frames(images, wells, chosen, run_dir, exclude, channel)
    columns = ["plate", "well", "count_fc", "area_fc"]
    hit_side = hit_wells.select("gene_symbol", "hit_rules", "gene_count_fc", "gene_area_fc", "_order", *columns)
    ref_side = refs.select(*columns, "control_name").rename(lambda c: f"ref_{c}")
    out = hit_side.join(frames, on=["plate", "well"], how="left").join(
        ref_side.with_columns(pl.col("ref_plate").alias("plate")), on="plate", how="left",
    ).join(
        frames.rename(lambda c: f"ref_{c}"), on=["ref_plate", "ref_well"], how="left",
    )
    return out.sort("_order", "plate", "well").drop("_order", "ref_plate")


def _typical_frames(images: pl.DataFrame | pl.LazyFrame, wells: pl.DataFrame, chosen: pl.DataFrame,
                    run_dir: str | Path | None, exclude: pl.Expr | None, channel: str) -> pl.DataFrame:
    """``plate, well, site, nuclei, frame, labels`` of the most typical analysed frame of each chosen well."""
    folder, file = path_columns(channel)
    frames = images.lazy()
    if exclude is not None:
        frames = frames.filter(~exclude.fill_null(False))
    per_field = wells.lazy().select("plate", "well", "nuclei_per_field")
    typical = (
        frames.select(
            plate=pl.col("Metadata_Plate").cast(pl.String), well=pl.col("Metadata_Well").cast(pl.String),
            site=pl.col("Metadata_Site").cast(pl.Int64), nuclei=pl.col("Count_Nuclei").cast(pl.Int64),
            _dir=pl.col(folder).cast(pl.String), _file=pl.col(file).cast(pl.String),
        )
        .join(chosen.lazy(), on=["plate", "well"], how="semi")
        .join(per_field, on=["plate", "well"])
        .with_columns(_d=(pl.col("nuclei") - pl.col("nuclei_per_field")).abs())
        .sort("plate", "well", "_d", "site")
        .group_by("plate", "well", maintain_order=True).first()
        .collect()
    )
    frame = [str(Path(d) / f) for d, f in zip(typical["_dir"], typical["_file"], strict=True)]
    labels = [None] * typical.height
    if run_dir is not None:
        candidates = (Path(run_dir) / "labels" / f"plate={p}" / f"{Path(f).stem}_labels.tif"
                      for p, f in zip(typical["plate"], typical["_file"], strict=True))
        labels = [str(c) if c.is_file() else None for c in candidates]
    return typical.select("plate", "well", "site", "nuclei").with_columns(
        frame=pl.Series(frame, dtype=pl.String), labels=pl.Series(labels, dtype=pl.String),
    )


def frame_thumbnail(frame: str | Path, labels: str | Path | None = None, *, size: int = THUMBNAIL,
                    crop: int = THUMBNAIL_CROP) -> bytes | None:
    """A JPEG of the centre of a frame, with the nuclei outlined when a label image is given.

    The frame is scaled for display with the engine's percentile normalization (so a frame without nuclei stays
    dark rather than showing stretched noise), its centre ``crop`` x ``crop`` px are kept, and the crop is
    shrunk by an integer factor (block mean) to at most ``size`` px. Outlines are the label pixels with a
    4-neighbour of another label; a block with an outline pixel is drawn in ``OUTLINE_RGB``.

    Parameters
    ----------
    frame
        The raw frame (any format :func:`~nucleiscreen.engine.readers.read_frame` reads).
    labels
        Its instance label image (the frame's shape), or None.

    Returns
    -------
    bytes or None
        The JPEG, or None when the frame cannot be read. A label image that cannot be read or does not match
        the frame is ignored.
    """
    try:
        raw = read_frame(frame)
    except (FrameReadError, OSError, ValueError):
        return None
    if raw.ndim != 2 or raw.size == 0:
        return None
    image = normalize(raw)
    outline = None
    if labels is not None:
        try:
            lab = tifffile.imread(labels)
        except (OSError, ValueError):
            lab = None
        if lab is not None and lab.shape == raw.shape:
            outline = _outline(lab)
    h, w = image.shape
    side = min(h, w, crop)
    y0, x0 = (h - side) // 2, (w - side) // 2
    factor = max(1, math.ceil(side / size))
    side -= side % factor
    grey = _shrink(image[y0:y0 + side, x0:x0 + side], factor, np.mean)
    rgb = np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    if outline is not None:
        rgb[_shrink(outline[y0:y0 + side, x0:x0 + side], factor, np.max)] = OUTLINE_RGB
    return imagecodecs.jpeg8_encode(rgb, level=JPEG_QUALITY, subsampling="444")  # keep 1-px outlines yellow


def _outline(labels: np.ndarray) -> np.ndarray:
    """Label pixels with a 4-neighbour of another value (background included); the frame edge is not one."""
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def _shrink(a: np.ndarray, factor: int, reduce) -> np.ndarray:
    if factor == 1:
        return a
    h, w = a.shape
    return reduce(a.reshape(h // factor, factor, w // factor, factor), axis=(1, 3))

