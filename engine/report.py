"""The screen report: one self-contained HTML page (inline CSS and SVG, no script, nothing fetched).

Sections: a summary, the hit table, the count-FC vs area-FC scatter of genes with the hits labelled (the
paper's Fig. 4, log2 axes, the rules' thresholds dashed), the control summary, the per-plate QC table, and a
heatmap of the count fold change for every plate (16 x 24 wells; hover a well for its gene and fold changes).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from nucleiscreen.engine.hits import DEFAULT_RULES, HitRule, format_value
from nucleiscreen.engine.layout import N_COLUMNS, ROWS

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .5em 0; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; } th { background: #f5f5f5; position: sticky; top: 0; }
.note { color: #666; font-size: .9em; } .bad { color: #b2182b; font-weight: bold; }
.plates { display: flex; flex-wrap: wrap; gap: 1em; }
.plate { margin: 0; }
.plate figcaption { font-size: .85em; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""

LOG2_RANGE = 3.0
"""Heatmap colours saturate at log2 FC = +-3 (an eighth of the reference, or 8 times it)."""

Z_PRIME_OK = 0.5
"""Z′ under this is marked in the QC table (0.5–1: an excellent assay)."""


def write_report(path: str | Path, wells: pl.DataFrame, genes: pl.DataFrame, plates: pl.DataFrame,
                 hits: pl.DataFrame, controls: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES
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

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    hit_genes = set(hits["gene_symbol"].to_list()) if hits.height else set()
    n_fields = int(plates["fields_analysed"].sum()) if plates.height else 0
    n_failed = int(plates["fields_failed"].sum()) if plates.height else 0
    rule_list = "".join(f"<li><b>{_e(r.name)}</b> ({_e(r.description)}): <code>{_e(str(r))}</code></li>"
                        for r in rules)
    by_plate = wells.partition_by("plate", as_dict=True)
    body = [
        "<h1>nucleiscreen screen report</h1>",
        f"<p>{plates.height} plates, {wells.height} wells, {n_fields} fields analysed, {n_failed} failed; "
        f"{genes.height} genes, <b>{hits.height} hits</b>. Fold changes are to the median of each plate's "
        "reference wells; a gene's fold change is the median over its wells.</p>",
        f"<p>Hit rules (on gene medians):</p><ul>{rule_list}</ul>",
        "<h2>Hits</h2>",
        _table(hits) if hits.height else "<p>No gene passes a rule.</p>",
        "<h2>Count vs nuclear area</h2>",
        _scatter(genes, hit_genes, rules),
        "<h2>Controls</h2>",
        "<p class='note'>Controls are never hits. Mock and untransfected next to the reference show "
        "transfection toxicity; positive controls should lose most nuclei.</p>",
        _table(controls),
        "<h2>Plate QC</h2>",
        f"<p class='note'>Z′ of nuclei per field, positive vs reference wells; below {Z_PRIME_OK}: red.</p>",
        _table(plates, flag={"z_prime": Z_PRIME_OK, "z_prime_robust": Z_PRIME_OK}),
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


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(df: pl.DataFrame, flag: dict[str, float] | None = None) -> str:
    """An HTML table; numeric cells right-aligned; ``flag`` marks values under a threshold per column."""
    flag = flag or {}
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows():
        cells = []
        for name, value, num in zip(df.columns, row, numeric, strict=True):
            cls = ["num"] if num else []
            if name in flag and value is not None and value < flag[name]:
                cls.append("bad")
            attr = f" class='{' '.join(cls)}'" if cls else ""
            cells.append(f"<td{attr}>{_e(format_value(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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


def _legend() -> str:
    stops = [-LOG2_RANGE, -2, -1, 0, 1, 2, LOG2_RANGE]
    cells = "".join(
        f"<rect x='{40 + i * 50}' y='4' width='50' height='14' fill='{_colour(v)}' stroke='#999'/>"
        f"<text x='{65 + i * 50}' y='32' text-anchor='middle'>{_fc_label(v)}</text>"
        for i, v in enumerate(stops)
    )
    return (f"<svg width='600' height='40' role='img'><text x='0' y='15'>FC</text>{cells}"
            "<rect x='420' y='4' width='14' height='14' fill='#cccccc'/><text x='440' y='15'>no field</text>"
            "<rect x='500' y='4' width='14' height='14' fill='#f2f2f2'/><text x='520' y='15'>not imaged</text>"
            "</svg><p class='note'>Reference wells have a black outline, positive controls a dashed one.</p>")


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
               f"{w['fields_failed']} failed")
        parts.append(f"<rect x='{x}' y='{y}' width='{cell - 1}' height='{cell - 1}' fill='{_colour(value)}'"
                     f"{stroke}><title>{_e(tip)}</title></rect>")
    width, height = left + N_COLUMNS * cell + 2, top + len(ROWS) * cell + 2
    return (f"<figure class='plate'><svg width='{width}' height='{height}' role='img'>{''.join(parts)}</svg>"
            f"<figcaption>{_e(plate)}</figcaption></figure>")


def _scatter(genes: pl.DataFrame, hit_genes: set[str], rules: Sequence[HitRule]) -> str:
    """Genes on log2 count FC (x) vs log2 area FC (y); count FC 0 on the left edge; no area: not drawn."""
    width, height, margin = 640, 440, 50
    pts = genes.filter(pl.col("count_fc").is_not_null() & (pl.col("area_fc") > 0))
    x_floor = -6.0  # count FC 1/64: where a gene without any nucleus is drawn
    xs = [x_floor if fc == 0 else max(x_floor, math.log2(fc)) for fc in pts["count_fc"]]
    ys = [math.log2(fc) for fc in pts["area_fc"]]
    x_lo, x_hi = math.floor(min([-2.0, *xs])), math.ceil(max([1.0, *xs]))
    y_lo, y_hi = math.floor(min([-1.0, *ys])), math.ceil(max([1.0, *ys]))

    def px(v: float) -> float:
        return margin + (v - x_lo) / (x_hi - x_lo) * (width - 2 * margin)

    def py(v: float) -> float:
        return height - margin - (v - y_lo) / (y_hi - y_lo) * (height - 2 * margin)

    parts = [f"<rect x='{margin}' y='{margin}' width='{width - 2 * margin}' height='{height - 2 * margin}' "
             "fill='none' stroke='#999'/>"]
    for v in range(x_lo, x_hi + 1):
        parts.append(f"<line x1='{px(v)}' x2='{px(v)}' y1='{height - margin}' y2='{height - margin + 4}' "
                     f"stroke='#999'/><text x='{px(v)}' y='{height - margin + 16}' text-anchor='middle'>"
                     f"{_fc_label(v)}</text>")
    for v in range(y_lo, y_hi + 1):
        parts.append(f"<line x1='{margin - 4}' x2='{margin}' y1='{py(v)}' y2='{py(v)}' stroke='#999'/>"
                     f"<text x='{margin - 6}' y='{py(v) + 4}' text-anchor='end'>{_fc_label(v)}</text>")
    parts.append(f"<text x='{width / 2}' y='{height - 10}' text-anchor='middle'>"
                 "count fold change (log scale)</text>"
                 f"<text transform='translate(14,{height / 2}) rotate(-90)' text-anchor='middle'>"
                 "area fold change (log scale)</text>")
    for rule in rules:
        for c in rule.conditions:
            if c.threshold > 0 and c.column in ("count_fc", "area_fc"):
                v = math.log2(c.threshold)
                if c.column == "count_fc" and x_lo <= v <= x_hi:
                    parts.append(f"<line x1='{px(v)}' x2='{px(v)}' y1='{margin}' y2='{height - margin}' "
                                 "stroke='#b2182b' stroke-dasharray='4,3'/>")
                elif c.column == "area_fc" and y_lo <= v <= y_hi:
                    parts.append(f"<line x1='{margin}' x2='{width - margin}' y1='{py(v)}' y2='{py(v)}' "
                                 "stroke='#b2182b' stroke-dasharray='4,3'/>")
    labels = []
    for gene, x, y, fc, afc in zip(pts["gene_symbol"], xs, ys, pts["count_fc"], pts["area_fc"], strict=True):
        hit = gene in hit_genes
        tip = f"<title>{_e(gene)}: count FC {format_value(fc)}, area FC {format_value(afc)}</title>"
        colour, r = ("#b2182b", 4) if hit else ("#888888", 2.5)
        parts.append(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='{r}' fill='{colour}' fill-opacity='0.8'>"
                     f"{tip}</circle>")
        if hit:
            labels.append(f"<text x='{px(x) + 6:.1f}' y='{py(y) - 5:.1f}' font-weight='bold'>"
                          f"{_e(gene)}</text>")
    unplotted = genes.join(pts, on="gene_symbol", how="anti")["gene_symbol"]
    hidden_hits = sorted(g for g in unplotted.to_list() if g in hit_genes)
    note = (f"<p class='note'>{pts.height} genes drawn; a gene with count FC 0 sits on the left edge; "
            f"{unplotted.len()} genes without a nuclear area or count (no nuclei, no field) are not drawn"
            + (f", among them the hits {_e(', '.join(hidden_hits))}" if hidden_hits else "") + ".</p>")
    return f"<svg width='{width}' height='{height}' role='img'>{''.join(parts)}{''.join(labels)}</svg>{note}"
