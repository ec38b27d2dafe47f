"""The report page: its sections assembled into one self-contained HTML file (inline CSS, SVG and JPEG data URIs;
no script, nothing fetched), with the hit table and the other tables, and the gallery of hit frames.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from nucleiscreen.engine.screen.report.frames import THUMBNAIL_CROP, frame_thumbnail
from nucleiscreen.engine.screen.report.plots import (
    controls_per_plate,
    distribution,
    gene_scatter,
    heatmap_legend,
    plate_heatmap,
    z_prime_plot,
)
from nucleiscreen.engine.screen.report.svg import escape
from nucleiscreen.engine.screen.report.text import format_value
from nucleiscreen.engine.screen.rules import DEFAULT_RULES, HitRule

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
        The tables of :func:`~nucleiscreen.engine.screen.analyze.analyze`: normalized wells, genes, plate QC, hits
        and the control summary.
    rules
        The hit rules used (their thresholds are drawn on the scatter and listed).
    examples
        Frames to show for the hits, from :func:`~nucleiscreen.engine.screen.report.frames.example_frames`; None or
        empty: no frames section content.
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
    rule_list = "".join(f"<li><b>{escape(r.name)}</b> ({escape(r.description)}): <code>{escape(str(r))}</code></li>"
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
        *(f"<p class='note'>{escape(n)}</p>" for n in notes),
        f"<p>Hit rules (on gene medians):</p><ul>{rule_list}</ul>",
        "<h2>Hits</h2>",
        _table(_pick(hits, HIT_COLUMNS)) if hits.height else "<p>No gene passes a rule.</p>",
        "<h2>Hit frames</h2>",
        _gallery(examples, hits.height),
        "<h2>Count vs nuclear area</h2>",
        gene_scatter(genes, hit_genes, rules),
        "<h2>Plate QC</h2>",
        "<p class='note'>Z′ of nuclei per field, positive (PLK1, KIF11) vs reference wells, per plate in name "
        f"order; plates whose robust Z′ is under {z_prime_min:g} are flagged (red).</p>",
        z_prime_plot(plates, z_prime_min),
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
        distribution(wells, "count_fc", "count fold change", (-6, 2)),
        distribution(wells, "area_fc", "area fold change", (-1, 2)),
        "</div>",
        "<h3>Controls per plate</h3>",
        controls_per_plate(plates),
        "<h2>Count fold change per plate</h2>",
        heatmap_legend(),
        "<div class='plates'>",
        *(plate_heatmap(plate, part) for (plate,), part in sorted(by_plate.items())),
        "</div>",
    ]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>nucleiscreen report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _gallery(examples: pl.DataFrame | None, n_hits: int) -> str:
    """The hit frames section: each shown hit well's frame beside its plate's reference frame, as thumbnails
    embedded in the page; the list of the frames instead when none of them can be read from here."""
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
                          f"<img alt='{escape(Path(frame).name)}' src='data:image/jpeg;base64,"
                          f"{base64.b64encode(data).decode('ascii')}'>")
        return f"<figure>{cache[key]}<figcaption>{caption}</figcaption></figure>"

    for (gene,), rows in examples.partition_by("gene_symbol", as_dict=True, maintain_order=True).items():
        first = rows.row(0, named=True)
        parts.append(f"<h3>{escape(gene)} <span class='note'>count FC {format_value(first['gene_count_fc'])}, "
                     f"area FC {format_value(first['gene_area_fc'])}; {escape(first['hit_rules'])}</span></h3>")
        parts.append("<div class='frames'>")
        for r in rows.iter_rows(named=True):
            ref = image(r["ref_frame"], r["ref_labels"],
                        f"{escape(r['ref_control_name'] or 'reference')} {escape(r['ref_well'] or '-')} "
                        f"f{r['ref_site'] if r['ref_site'] is not None else '-'}: {_nuclei(r['ref_nuclei'])}")
            hit = image(r["frame"], r["labels"],
                        f"{escape(gene)} {escape(r['well'])} f{r['site'] if r['site'] is not None else '-'}: "
                        f"{_nuclei(r['nuclei'])}, well count FC {format_value(r['count_fc'])}")
            parts.append(f"<div><div class='pair'>{ref}{hit}</div><figcaption>plate {escape(r['plate'])}"
                         f"{'' if r['labels'] else ', no label image'}</figcaption></div>")
        parts.append("</div>")
    return "".join(parts)


def _nuclei(n: int | None) -> str:
    return "-" if n is None else f"{n} nuclei"


def _pick(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """The named columns that ``df`` has, then its readouts' fold changes, then its rule pass counts."""
    return df.select(picked(df, columns))


def picked(df: pl.DataFrame, columns: Sequence[str]) -> list[str]:
    """``columns`` that ``df`` has, then its readouts' fold changes (``<name>_fc`` columns beyond them: see
    ``engine/screen/readouts.py``), then its rule pass counts: what a summary table of it shows."""
    readouts = [c for c in df.columns if c.endswith("_fc") and not c.startswith("log2_") and c not in columns]
    return [c for c in columns if c in df.columns] + readouts + [c for c in df.columns if c.startswith("wells_pass")]


def _table(df: pl.DataFrame, flag: dict[str, float] | None = None) -> str:
    """An HTML table (scrolls sideways when wide); numeric cells right-aligned; ``flag`` marks values under a
    threshold per column, and ``True`` in a boolean column named ``low_*``."""
    flag = flag or {}
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    head = "".join(f"<th>{escape(c).replace('_', '_<wbr>')}</th>" for c in df.columns)  # headers break at _
    rows = []
    for row in df.iter_rows():
        cells = []
        for name, value, num in zip(df.columns, row, numeric, strict=True):
            cls = ["num"] if num else []
            if (name in flag and value is not None and value < flag[name]) or (name.startswith("low_")
                                                                             and value is True):
                cls.append("bad")
            attr = f" class='{' '.join(cls)}'" if cls else ""
            cells.append(f"<td{attr}>{escape(format_value(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></div>")

