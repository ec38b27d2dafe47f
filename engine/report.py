"""The screen report: one self-contained HTML page (inline CSS, SVG and JPEG data URIs; no script, nothing fetched).

Sections, in the order a screener reads them: a summary; the hit table; for each hit a few of its frames, each
next to a reference (OTP) frame of the same plate, with the nuclei outlined when the run saved label images; the
count-FC vs area-FC scatter of genes with the hits labelled (the paper's Fig. 4, log2 axes, the rules'
thresholds dashed); plate QC (Z′ of every plate across the screen, the plates under the threshold, the QC
table); controls (their summary, the distributions of their wells' fold changes beside the sample wells', and
mock, untransfected and positive controls per plate, the transfection-toxicity check); and a heatmap of the
count fold change of every plate (16 x 24 wells; hover a well for its gene and fold changes).

:func:`example_frames` chooses the frames to show (a polars query over the image table); :func:`frame_thumbnail`
draws one.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import imagecodecs
import numpy as np
import polars as pl
import tifffile

from nucleiscreen.engine.hits import DEFAULT_RULES, HitRule, format_value
from nucleiscreen.engine.layout import N_COLUMNS, ROWS
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.kernels.normalize import normalize

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1320px; padding: 0 1em; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin: 1.2em 0 .3em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .5em 0; }
th, td { padding: 2px 6px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; max-width: 7.5em; }
.key { display: inline-block; width: .8em; height: .8em; border-radius: 50%; margin: 0 .3em 0 1em; }
td.num { text-align: right; } th { background: #f5f5f5; position: sticky; top: 0; }
.note { color: #666; font-size: .9em; } .bad { color: #b2182b; font-weight: bold; }
.plates, .frames, .panels { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: .85em; color: #444; }
.pair { display: flex; gap: 4px; padding: 4px; border: 1px solid #ddd; }
.pair img { display: block; width: 256px; height: 256px; image-rendering: pixelated; background: #000; }
.missing { width: 256px; height: 256px; display: flex; align-items: center; justify-content: center;
           background: #eee; color: #666; font-size: .85em; text-align: center; }
details summary { cursor: pointer; color: #333; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""

LOG2_RANGE = 3.0
"""Heatmap colours saturate at log2 FC = +-3 (an eighth of the reference, or 8 times it)."""

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

HIT_COLUMNS = ("gene_symbol", "hit_rules", "wells", "plates", "count_fc", "area_fc", "count_ssmd", "area_ssmd",
               "count_b_score", "nuclei_per_field")
CONTROL_COLUMNS = ("role", "control_name", "reference", "wells", "plates", "nuclei_per_field", "count_fc",
                   "area_fc", "count_ssmd", "count_fc_min", "count_fc_max", "z_prime_robust")
PLATE_COLUMNS = ("plate", "fields_analysed", "fields_failed", "fields_excluded", "reference_wells",
                 "reference_nuclei_per_field", "reference_cv", "positive_count_fc", "dynamic_range",
                 "mock_count_fc", "untransfected_count_fc", "z_prime", "z_prime_robust", "low_z_prime", "no_reference")


def write_report(path: str | Path, wells: pl.DataFrame, genes: pl.DataFrame, plates: pl.DataFrame,
                 hits: pl.DataFrame, controls: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES, *,
                 examples: pl.DataFrame | None = None, z_prime_min: float = 0.5, notes: Sequence[str] = ()
                 ) -> Path:
    """Write the report page (to a temporary name, then renamed into place).

    Parameters
    ----------
    path
        The ``.html`` file to write.
    wells, genes, plates, hits, controls
        The tables of :func:`~nucleiscreen.engine.analyze.analyze`: normalized wells, genes, plate QC, hits
        and the control summary.
    rules
        The hit rules used (their thresholds are drawn on the scatter and listed).
    examples
        Frames to show for the hits, from :func:`example_frames`; None or empty: no frames section content.
    z_prime_min
        The threshold of ``plates["low_z_prime"]``, drawn on the Z′ plot.
    notes
        Lines added to the summary (e.g. what frame QC was applied).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    hit_genes = set(hits["gene_symbol"].to_list()) if hits.height else set()
    total = {c: int(plates[c].sum()) if plates.height else 0
             for c in ("fields_analysed", "fields_failed", "fields_excluded")}
    low = plates.filter(pl.col("low_z_prime").fill_null(False)) if "low_z_prime" in plates.columns else plates[:0]
    rule_list = "".join(f"<li><b>{_e(r.name)}</b> ({_e(r.description)}): <code>{_e(str(r))}</code></li>"
                        for r in rules)
    by_plate = wells.partition_by("plate", as_dict=True)
    low_text = (f"<span class='bad'>{low.height} plate(s) with robust Z′ under {z_prime_min:g}</span>"
                if low.height else f"every plate with a robust Z′ of at least {z_prime_min:g} or undefined")
    body = [
        "<h1>nucleiscreen screen report</h1>",
        f"<p>{plates.height} plates, {wells.height} wells, {total['fields_analysed']} fields analysed, "
        f"{total['fields_failed']} failed, {total['fields_excluded']} excluded by frame QC; {genes.height} genes, "
        f"<b>{hits.height} hits</b>; {low_text}. Fold changes are to the median of each plate's reference "
        "wells; a gene's value is the median over its wells.</p>",
        *(f"<p class='note'>{_e(n)}</p>" for n in notes),
        f"<p>Hit rules (on gene medians):</p><ul>{rule_list}</ul>",
        "<h2>Hits</h2>",
        _table(_pick(hits, HIT_COLUMNS)) if hits.height else "<p>No gene passes a rule.</p>",
        "<h2>Hit frames</h2>",
        _gallery(examples, hits.height),
        "<h2>Count vs nuclear area</h2>",
        _scatter(genes, hit_genes, rules),
        "<h2>Plate QC</h2>",
        "<p class='note'>Z′ of nuclei per field, positive (PLK1, KIF11) vs reference wells, per plate in name "
        f"order; plates whose robust Z′ is under {z_prime_min:g} are flagged (red).</p>",
        _z_prime_plot(plates, z_prime_min),
        _table(_pick(low, PLATE_COLUMNS)) if low.height and plates.height > 24 else "",
        f"<details{' open' if plates.height <= 24 else ''}><summary>QC table of all {plates.height} plates"
        "</summary>",
        _table(_pick(plates, PLATE_COLUMNS), flag={"z_prime": z_prime_min, "z_prime_robust": z_prime_min}),
        "</details>",
        "<h2>Controls</h2>",
        "<p class='note'>Controls are never hits. Mock (transfection reagent alone) and untransfected wells "
        "beside the non-targeting reference show transfection toxicity; positive controls should lose most "
        "nuclei.</p>",
        _table(_pick(controls, CONTROL_COLUMNS)),
        "<div class='panels'>",
        _distribution(wells, "count_fc", "count fold change", (-6, 2)),
        _distribution(wells, "area_fc", "area fold change", (-1, 2)),
        "</div>",
        "<h3>Controls per plate</h3>",
        _controls_per_plate(plates),
        "<h2>Count fold change per plate</h2>",
        _legend(),
        "<div class='plates'>",
        *(_heatmap(plate, part) for (plate,), part in sorted(by_plate.items())),
        "</div>",
    ]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>nucleiscreen report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------- hit frames
def example_frames(images: pl.DataFrame | pl.LazyFrame, wells: pl.DataFrame, hits: pl.DataFrame,
                   run_dir: str | Path | None = None, *, per_hit: int = FRAMES_PER_HIT,
                   max_hits: int = REPORT_HITS, exclude: pl.Expr | None = None) -> pl.DataFrame:
    """Choose, for each hit, a few frames of its wells, each paired with a reference frame of the same plate.

    For each of the first ``max_hits`` hits (in the order of ``hits``), its ``per_hit`` sample wells whose
    count FC is closest to the gene's (ties: plate, well). For each plate involved, the reference well whose
    count FC is closest to 1. For each chosen well, its most typical frame: the analysed frame whose
    ``Count_Nuclei`` is closest to the well's nuclei per field (ties: the lowest ``Metadata_Site``).

    Parameters
    ----------
    images
        The image table (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Count_Nuclei``,
        ``PathName_DNA``, ``FileName_DNA``).
    wells
        From :func:`~nucleiscreen.engine.screen.normalize_plates`.
    hits
        From :func:`~nucleiscreen.engine.hits.call_hits`.
    run_dir
        The run folder; label images are looked for at ``RUN/labels/plate=<plate>/<stem>_labels.tif``.
    per_hit, max_hits
        How many wells per hit, and how many hits.
    exclude
        The frame exclusion used for the wells (excluded frames are never shown).

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
    frames = _typical_frames(images, wells, chosen, run_dir, exclude)
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
                    run_dir: str | Path | None, exclude: pl.Expr | None) -> pl.DataFrame:
    """``plate, well, site, nuclei, frame, labels`` of the most typical analysed frame of each chosen well."""
    frames = images.lazy()
    if exclude is not None:
        frames = frames.filter(~exclude.fill_null(False))
    per_field = wells.lazy().select("plate", "well", "nuclei_per_field")
    typical = (
        frames.select(
            plate=pl.col("Metadata_Plate").cast(pl.String), well=pl.col("Metadata_Well").cast(pl.String),
            site=pl.col("Metadata_Site").cast(pl.Int64), nuclei=pl.col("Count_Nuclei").cast(pl.Int64),
            _dir=pl.col("PathName_DNA").cast(pl.String), _file=pl.col("FileName_DNA").cast(pl.String),
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


def _gallery(examples: pl.DataFrame | None, n_hits: int) -> str:
    if examples is None or examples.height == 0:
        return ("<p class='note'>No frames to show" + (" (no hit)" if n_hits == 0 else
                " (the hits' frames are not in the image table)") + ".</p>")
    shown = examples["gene_symbol"].n_unique()
    paths = examples.select(pl.concat_list("frame", "ref_frame").explode().drop_nulls().unique()).to_series()
    if not any(Path(f).is_file() for f in paths):
        listed = examples.select("gene_symbol", "plate", "well", "site", "frame", "ref_well", "ref_site", "ref_frame")
        return ("<p class='note'>None of the hits' frames is reachable from where the report was written (they "
                "were segmented elsewhere, or moved); these are the frames that would be shown:</p>"
                + _table(listed))
    parts = [f"<p class='note'>For {shown} of {n_hits} hits (strongest count loss first): the most typical "
             "field of its wells closest to the gene's count FC, left of it the plate's most typical reference "
             f"field; the centre {THUMBNAIL_CROP} px of each frame, contrast-stretched per frame; nuclei "
             "outlined when the run saved label images (<code>segment --save-labels</code>).</p>"]
    cache: dict[tuple[str | None, str | None], str] = {}

    def image(frame: str | None, labels: str | None, caption: str) -> str:
        key = (frame, labels)
        if key not in cache:
            data = frame_thumbnail(frame, labels) if frame is not None else None
            cache[key] = ("<div class='missing'>frame not reachable</div>" if data is None else
                          f"<img alt='{_e(Path(frame).name)}' src='data:image/jpeg;base64,"
                          f"{base64.b64encode(data).decode('ascii')}'>")
        return f"<figure>{cache[key]}<figcaption>{caption}</figcaption></figure>"

    for (gene,), rows in examples.partition_by("gene_symbol", as_dict=True, maintain_order=True).items():
        first = rows.row(0, named=True)
        parts.append(f"<h3>{_e(gene)} <span class='note'>count FC {format_value(first['gene_count_fc'])}, "
                     f"area FC {format_value(first['gene_area_fc'])}; {_e(first['hit_rules'])}</span></h3>")
        parts.append("<div class='frames'>")
        for r in rows.iter_rows(named=True):
            ref = image(r["ref_frame"], r["ref_labels"],
                        f"{_e(r['ref_control_name'] or 'reference')} {_e(r['ref_well'] or '-')} "
                        f"f{r['ref_site'] if r['ref_site'] is not None else '-'}: {_nuclei(r['ref_nuclei'])}")
            hit = image(r["frame"], r["labels"],
                        f"{_e(gene)} {_e(r['well'])} f{r['site'] if r['site'] is not None else '-'}: "
                        f"{_nuclei(r['nuclei'])}, well count FC {format_value(r['count_fc'])}")
            parts.append(f"<div><div class='pair'>{ref}{hit}</div><figcaption>plate {_e(r['plate'])}"
                         f"{'' if r['labels'] else ', no label image'}</figcaption></div>")
        parts.append("</div>")
    return "".join(parts)


def _nuclei(n: int | None) -> str:
    return "-" if n is None else f"{n} nuclei"


# --------------------------------------------------------------------------------------------- tables
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pick(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """The named columns that ``df`` has, then its rule pass counts."""
    return df.select([c for c in columns if c in df.columns] + [c for c in df.columns if c.startswith("wells_pass")])


def _table(df: pl.DataFrame, flag: dict[str, float] | None = None) -> str:
    """An HTML table (scrolls sideways when wide); numeric cells right-aligned; ``flag`` marks values under a
    threshold per column, and ``True`` in a boolean column named ``low_*``."""
    flag = flag or {}
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    head = "".join(f"<th>{_e(c).replace('_', '_<wbr>')}</th>" for c in df.columns)  # headers break at _
    rows = []
    for row in df.iter_rows():
        cells = []
        for name, value, num in zip(df.columns, row, numeric, strict=True):
            cls = ["num"] if num else []
            if (name in flag and value is not None and value < flag[name]) or (name.startswith("low_")
                                                                             and value is True):
                cls.append("bad")
            attr = f" class='{' '.join(cls)}'" if cls else ""
            cells.append(f"<td{attr}>{_e(format_value(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></div>")


# --------------------------------------------------------------------------------------------- plots
def _colour(log2_fc: float | None) -> str:
    """Blue (fewer nuclei), white (as the reference), red (more), saturating at +-LOG2_RANGE; null: grey."""
    if log2_fc is None:
        return "#cccccc"
    t = max(-1.0, min(1.0, log2_fc / LOG2_RANGE))
    end = (33, 102, 172) if t < 0 else (178, 24, 43)
    r, g, b = (round(255 + (e - 255) * abs(t)) for e in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def _fc_label(log2_fc: float) -> str:
    """A power of two as people read fold changes: ``1/8``, ``1``, ``4``."""
    return f"1/{2 ** -log2_fc:g}" if log2_fc < 0 else f"{2 ** log2_fc:g}"


class _Axes:
    """A plot frame: data ranges mapped to an SVG box, with tick helpers."""

    def __init__(self, width: int, height: int, x: tuple[float, float], y: tuple[float, float],
                 margin: tuple[int, int, int, int] = (20, 20, 45, 55)) -> None:
        self.width, self.height = width, height
        self.x_lo, self.x_hi = x
        self.y_lo, self.y_hi = y
        self.top, self.right, self.bottom, self.left = margin
        self.parts = [f"<rect x='{self.left}' y='{self.top}' width='{width - self.left - self.right}' "
                      f"height='{height - self.top - self.bottom}' fill='none' stroke='#999'/>"]

    def px(self, v: float) -> float:
        v = min(max(v, self.x_lo), self.x_hi)
        return self.left + (v - self.x_lo) / (self.x_hi - self.x_lo) * (self.width - self.left - self.right)

    def py(self, v: float) -> float:
        v = min(max(v, self.y_lo), self.y_hi)
        return self.height - self.bottom - (v - self.y_lo) / (self.y_hi - self.y_lo) * (
            self.height - self.top - self.bottom)

    def x_tick(self, v: float, label: str) -> None:
        x, y = self.px(v), self.height - self.bottom
        self.parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y}' y2='{y + 4}' stroke='#999'/>"
                          f"<text x='{x:.1f}' y='{y + 16}' text-anchor='middle'>{_e(label)}</text>")

    def y_tick(self, v: float, label: str) -> None:
        x, y = self.left, self.py(v)
        self.parts.append(f"<line x1='{x - 4}' x2='{x}' y1='{y:.1f}' y2='{y:.1f}' stroke='#999'/>"
                          f"<text x='{x - 6}' y='{y + 4:.1f}' text-anchor='end'>{_e(label)}</text>")

    def h_line(self, v: float, colour: str = "#b2182b", dash: str = "4,3") -> None:
        y = self.py(v)
        self.parts.append(f"<line x1='{self.left}' x2='{self.width - self.right}' y1='{y:.1f}' y2='{y:.1f}' "
                          f"stroke='{colour}' stroke-dasharray='{dash}'/>")

    def v_line(self, v: float, colour: str = "#b2182b", dash: str = "4,3") -> None:
        x = self.px(v)
        self.parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{self.top}' y2='{self.height - self.bottom}' "
                          f"stroke='{colour}' stroke-dasharray='{dash}'/>")

    def labels(self, x: str, y: str) -> None:
        mid_x = (self.left + self.width - self.right) / 2
        mid_y = (self.top + self.height - self.bottom) / 2
        self.parts.append(f"<text x='{mid_x}' y='{self.height - 8}' text-anchor='middle'>{_e(x)}</text>"
                          f"<text transform='translate(14,{mid_y}) rotate(-90)' text-anchor='middle'>"
                          f"{_e(y)}</text>")

    def svg(self, extra: str = "") -> str:
        return (f"<svg width='{self.width}' height='{self.height}' role='img'>{''.join(self.parts)}{extra}"
                "</svg>")


def _legend() -> str:
    stops = [-LOG2_RANGE, -2, -1, 0, 1, 2, LOG2_RANGE]
    cells = "".join(
        f"<rect x='{40 + i * 50}' y='4' width='50' height='14' fill='{_colour(v)}' stroke='#999'/>"
        f"<text x='{65 + i * 50}' y='32' text-anchor='middle'>{_fc_label(v)}</text>"
        for i, v in enumerate(stops)
    )
    extra = (f"<rect x='{60 + len(stops) * 50}' y='4' width='14' height='14' fill='{_colour(None)}'/>"
             f"<text x='{80 + len(stops) * 50}' y='15'>no field</text>"
             f"<rect x='{150 + len(stops) * 50}' y='4' width='14' height='14' fill='#f2f2f2'/>"
             f"<text x='{170 + len(stops) * 50}' y='15'>not imaged</text>")
    return (f"<svg width='{260 + len(stops) * 50}' height='38' role='img'><text x='0' y='15'>FC</text>{cells}"
            f"{extra}</svg><p class='note'>Reference wells have a black outline, positive controls a dashed "
            "one.</p>")


def _heatmap(plate: str, wells: pl.DataFrame, cell: int = 14) -> str:
    """One plate: 16 x 24 cells coloured by log2 count FC (count FC 0 is the darkest blue)."""
    left, top = 18, 14
    parts = [f"<text x='{left + (c - 1) * cell + cell / 2}' y='10' text-anchor='middle'>{c}</text>"
             for c in range(1, N_COLUMNS + 1, 2)]
    parts += [f"<text x='2' y='{top + r * cell + cell - 3}'>{letter}</text>" for r, letter in enumerate(ROWS)]
    present = set(wells["well"].to_list())
    for r, letter in enumerate(ROWS):  # wells with no row in the run (never imaged): pale, no tooltip
        parts += [f"<rect x='{left + c * cell}' y='{top + r * cell}' width='{cell - 1}' height='{cell - 1}' "
                  "fill='#f2f2f2'/>" for c in range(N_COLUMNS) if f"{letter}{c + 1:02d}" not in present]
    for w in wells.iter_rows(named=True):
        if w["row"] not in ROWS or not 1 <= (w["column"] or 0) <= N_COLUMNS:
            continue
        x, y = left + (w["column"] - 1) * cell, top + ROWS.index(w["row"]) * cell
        fc = w["count_fc"]
        value = None if fc is None else (-LOG2_RANGE if fc == 0 else math.log2(fc))
        stroke = ""
        if w["is_reference"]:
            stroke = " stroke='#000' stroke-width='1.5'"
        elif w["role"] == "positive":
            stroke = " stroke='#000' stroke-dasharray='2,2'"
        label = w["gene_symbol"] if w["role"] == "sample" else (w["control_name"] or w["role"] or "-")
        tip = (f"{w['well']} {label} ({w['role'] or 'no layout row'}): count FC {format_value(fc)}, "
               f"area FC {format_value(w['area_fc'])}, fields {w['fields_analysed']} analysed / "
               f"{w['fields_failed']} failed / {w['fields_excluded']} excluded")
        parts.append(f"<rect x='{x}' y='{y}' width='{cell - 1}' height='{cell - 1}' fill='{_colour(value)}'"
                     f"{stroke}><title>{_e(tip)}</title></rect>")
    width, height = left + N_COLUMNS * cell + 2, top + len(ROWS) * cell + 2
    return (f"<figure class='plate'><svg width='{width}' height='{height}' role='img'>{''.join(parts)}</svg>"
            f"<figcaption>{_e(plate)}</figcaption></figure>")


def _scatter(genes: pl.DataFrame, hit_genes: set[str], rules: Sequence[HitRule]) -> str:
    """Genes on log2 count FC (x) vs log2 area FC (y). Count FC 0 sits on the left edge; a gene without a
    nuclear area (no nucleus left) is an open triangle on the bottom edge."""
    x_floor = -6.0  # count FC 1/64: where a gene without any nucleus is drawn
    pts = genes.filter(pl.col("count_fc").is_not_null())
    xs = [x_floor if fc == 0 else max(x_floor, math.log2(fc)) for fc in pts["count_fc"]]
    ys = [None if fc is None or fc <= 0 else math.log2(fc) for fc in pts["area_fc"]]
    known = [y for y in ys if y is not None]
    x_lo, x_hi = math.floor(min([-2.0, *xs])), math.ceil(max([1.0, *xs]))
    y_lo, y_hi = math.floor(min([-1.0, *known])), math.ceil(max([1.0, *known]))
    no_area_y = y_lo - 0.5  # a band under the axis's lowest tick for the genes without an area
    y_min = no_area_y - 0.25 if len(known) < len(ys) else y_lo - 0.25
    ax = _Axes(640, 440, (x_lo - 0.25, x_hi + 0.25), (y_min, y_hi + 0.25), margin=(30, 30, 50, 60))
    for v in range(x_lo, x_hi + 1):
        ax.x_tick(v, _fc_label(v))
    for v in range(y_lo, y_hi + 1):
        ax.y_tick(v, _fc_label(v))
    if len(known) < len(ys):
        ax.y_tick(no_area_y, "no area")
    ax.labels("count fold change (log scale)", "area fold change (log scale)")
    for rule in rules:
        for c in rule.conditions:
            if c.threshold > 0 and c.column in ("count_fc", "area_fc"):
                v = math.log2(c.threshold)
                if c.column == "count_fc" and x_lo <= v <= x_hi:
                    ax.v_line(v)
                elif c.column == "area_fc" and y_lo <= v <= y_hi:
                    ax.h_line(v)
    labels = []
    for gene, x, y, fc, afc in zip(pts["gene_symbol"], xs, ys, pts["count_fc"], pts["area_fc"], strict=True):
        hit = gene in hit_genes
        tip = f"<title>{_e(gene)}: count FC {format_value(fc)}, area FC {format_value(afc)}</title>"
        colour, r = ("#b2182b", 4) if hit else ("#888888", 2.5)
        cx, cy = ax.px(x), ax.py(no_area_y if y is None else y)
        if y is None:
            ax.parts.append(f"<path d='M{cx - r:.1f},{cy + r:.1f} L{cx + r:.1f},{cy + r:.1f} L{cx:.1f},"
                            f"{cy - r:.1f} Z' fill='none' stroke='{colour}' stroke-width='1.5'>{tip}</path>")
        else:
            ax.parts.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='{r}' fill='{colour}' fill-opacity='0.8'>"
                            f"{tip}</circle>")
        if hit:
            labels.append(f"<text x='{cx + 6:.1f}' y='{cy - 5:.1f}' font-weight='bold'>{_e(gene)}</text>")
    no_area = sum(y is None for y in ys)
    note = (f"<p class='note'>{pts.height} genes; count FC 0 (no nucleus left) at 1/64; genes without a "
            f"nuclear area ({no_area}) as open triangles at the bottom; dashed: the hit rules' thresholds; "
            f"genes without an analysed well ({genes.height - pts.height}) are not drawn.</p>")
    return ax.svg("".join(labels)) + note


def _z_prime_plot(plates: pl.DataFrame, z_prime_min: float) -> str:
    """Robust (filled) and classic (open) Z′ of every plate in plate order; under the threshold in red."""
    if plates.height == 0:
        return ""
    n = plates.height
    values = [v for c in ("z_prime", "z_prime_robust") for v in plates[c].drop_nulls()]
    y_lo = max(-2.0, math.floor(min([0.0, *values]) * 2) / 2)
    ax = _Axes(max(420, min(1100, 80 + 12 * n)), 260, (-0.5, n - 0.5), (y_lo, 1.0))
    for v in np.arange(y_lo, 1.01, 0.5):
        ax.y_tick(float(v), f"{v:g}")
    ax.h_line(0.0, "#999", "2,2")
    ax.h_line(z_prime_min)
    step = 1 if n <= 12 else math.ceil(n / 10)
    for i in range(0, n, step):
        ax.x_tick(i, str(i + 1))
    ax.labels("plate (in name order)", "Z′ of nuclei per field")
    for i, p in enumerate(plates.iter_rows(named=True)):
        x = ax.px(i)
        for column, filled in (("z_prime", False), ("z_prime_robust", True)):
            z = p[column]
            if z is None:
                continue
            bad = z < z_prime_min
            colour = "#b2182b" if bad else "#2166ac"
            fill = f"fill='{colour}'" if filled else "fill='white'"
            tip = (f"{p['plate']}: {'robust ' if filled else ''}Z′ {format_value(z)}"
                   + (" (clipped)" if z < y_lo else ""))
            ax.parts.append(f"<circle cx='{x:.1f}' cy='{ax.py(z):.1f}' r='3.5' {fill} stroke='{colour}'>"
                            f"<title>{_e(tip)}</title></circle>")
    undefined = plates.filter(pl.col("z_prime_robust").is_null())["plate"].to_list()
    note = ("<p class='note'>Filled: robust Z′ (median, MAD), open: classic (mean, SD); dashed red: the "
            f"threshold {z_prime_min:g}; values under {y_lo:g} are drawn at the bottom edge."
            + (f" No Z′ (fewer than 2 positive or reference wells): {_e(', '.join(undefined))}." if undefined
               else "") + "</p>")
    return ax.svg() + note


def _distribution(wells: pl.DataFrame, column: str, title: str, x_range: tuple[int, int]) -> str:
    """One row per control (and one for all sample wells): quartile box, 5–95 % whiskers, the control wells as
    dots, on a log2 axis; values outside the range (count FC 0 included) sit on its edge."""
    name = pl.when(pl.col("role") == "sample").then(pl.lit("samples")).otherwise(
        pl.coalesce("control_name", "role"))
    order = (pl.when(pl.col("is_reference")).then(0).when(pl.col("role") == "negative").then(1)
             .when(pl.col("role") == "sample").then(2).when(pl.col("role") == "positive").then(3).otherwise(4))
    data = (wells.filter(pl.col("role").is_not_null() & (pl.col("role") != "empty") & pl.col(column).is_not_null())
            .select(name.alias("group"), order.alias("order"), pl.col(column).alias("v"), "plate", "well"))
    groups = (data.group_by("group").agg(pl.col("order").min(), n=pl.len(),
                                         q=pl.concat_list(pl.col("v").quantile(q) for q in (.05, .25, .5, .75, .95)))
              .sort("order", "group"))
    if groups.height == 0:
        return ""
    lo, hi = x_range
    row_h = 26
    ax = _Axes(560, 40 + 45 + row_h * groups.height, (lo, hi), (0, groups.height), margin=(40, 20, 45, 130))

    def lx(v: float) -> float:
        return ax.px(lo if v <= 0 else math.log2(v))

    for v in range(lo, hi + 1):
        ax.x_tick(v, _fc_label(v))
    ax.v_line(0.0, "#999", "2,2")
    ax.parts.append(f"<text x='{ax.left}' y='16' font-weight='bold'>{_e(title)} per well</text>")
    by_group = data.partition_by("group", as_dict=True)
    for i, g in enumerate(groups.iter_rows(named=True)):
        y = ax.top + row_h * i + row_h / 2
        q5, q25, q50, q75, q95 = g["q"]
        ax.parts.append(
            f"<text x='{ax.left - 6}' y='{y + 4}' text-anchor='end'>{_e(g['group'])} ({g['n']})</text>"
            f"<line x1='{lx(q5):.1f}' x2='{lx(q95):.1f}' y1='{y}' y2='{y}' stroke='#555'/>"
            f"<rect x='{lx(q25):.1f}' y='{y - 7}' width='{max(1.0, lx(q75) - lx(q25)):.1f}' height='14' "
            f"fill='#ddd' stroke='#555'/>"
            f"<line x1='{lx(q50):.1f}' x2='{lx(q50):.1f}' y1='{y - 7}' y2='{y + 7}' stroke='#000' "
            "stroke-width='2'/>")
        if g["group"] == "samples":
            continue
        part = by_group[(g["group"],)]
        colour = "#2166ac" if g["order"] <= 1 else "#b2182b" if g["order"] == 3 else "#4d9221"
        for j, (v, plate, well) in enumerate(part.select("v", "plate", "well").iter_rows()):
            jitter = ((j * 0.618034) % 1 - 0.5) * 12
            ax.parts.append(f"<circle cx='{lx(v):.1f}' cy='{y + jitter:.1f}' r='2' fill='{colour}' "
                            f"fill-opacity='0.6'><title>{_e(plate)} {_e(well)}: {format_value(v)}</title>"
                            "</circle>")
    return "<figure>" + ax.svg() + ("<figcaption>box: quartiles, whiskers: 5–95 %, dots: control wells "
                                    "(samples: box only)</figcaption></figure>")


def _controls_per_plate(plates: pl.DataFrame) -> str:
    """Median count FC of mock, untransfected and positive wells on every plate (the reference is 1)."""
    series = [("mock_count_fc", "mock", "#4d9221"), ("untransfected_count_fc", "untransfected", "#762a83"),
              ("positive_count_fc", "positive (PLK1, KIF11)", "#b2182b")]
    series = [s for s in series if s[0] in plates.columns and plates[s[0]].drop_nulls().len()]
    if not series or plates.height == 0:
        return "<p class='note'>No mock, untransfected or positive wells.</p>"
    n = plates.height
    ax = _Axes(max(420, min(1100, 80 + 12 * n)), 260, (-0.5, n - 0.5), (-6, 1))
    for v in range(-6, 2):
        ax.y_tick(v, _fc_label(v))
    ax.h_line(0.0, "#2166ac", "")
    step = 1 if n <= 12 else math.ceil(n / 10)
    for i in range(0, n, step):
        ax.x_tick(i, str(i + 1))
    ax.labels("plate (in name order)", "count FC to the reference")
    legend = []
    for column, label, colour in series:
        for i, (plate, v) in enumerate(plates.select("plate", column).iter_rows()):
            if v is None:
                continue
            y = ax.py(-6 if v <= 0 else math.log2(v))
            ax.parts.append(f"<circle cx='{ax.px(i):.1f}' cy='{y:.1f}' r='3' fill='{colour}'><title>"
                            f"{_e(plate)} {_e(label)}: count FC {format_value(v)}</title></circle>")
        legend.append(f"<span class='key' style='background:{colour}'></span>{_e(label)}")
    legend.append("<span class='key' style='background:#2166ac;border-radius:0;height:2px'></span>"
                  "reference (1 by definition)")
    return (f"<div>{''.join(legend)}</div>" + ax.svg()
            + "<p class='note'>Median count FC of each plate's wells of that kind. The non-targeting reference "
            "is transfected with an siRNA: mock above 1 means the siRNA transfection itself costs cells, "
            "untransfected above mock that the reagent does.</p>")
