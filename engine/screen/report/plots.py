"""The report's six plots, each an SVG string: the legend and the per-plate heatmap of the count fold change, the
gene scatter of count vs area fold change, the Z′ of every plate, the distributions of the controls' fold
changes, and the controls per plate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from nucleiscreen.engine.screen.layout import N_COLUMNS, ROWS
from nucleiscreen.engine.screen.report.svg import Axes, escape
from nucleiscreen.engine.screen.report.text import format_value
from nucleiscreen.engine.screen.rules import HitRule

LOG2_RANGE = 3.0
"""Heatmap colours saturate at log2 FC = +-3 (an eighth of the reference, or 8 times it)."""


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


def heatmap_legend() -> str:
    """The colour scale of :func:`plate_heatmap`, with the grey of wells without a field or never imaged."""
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


def plate_heatmap(plate: str, wells: pl.DataFrame, cell: int = 14) -> str:
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
                     f"{stroke}><title>{escape(tip)}</title></rect>")
    width, height = left + N_COLUMNS * cell + 2, top + len(ROWS) * cell + 2
    return (f"<figure class='plate'><svg width='{width}' height='{height}' role='img'>{''.join(parts)}</svg>"
            f"<figcaption>{escape(plate)}</figcaption></figure>")


def gene_scatter(genes: pl.DataFrame, hit_genes: set[str], rules: Sequence[HitRule]) -> str:
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
    ax = Axes(640, 440, (x_lo - 0.25, x_hi + 0.25), (y_min, y_hi + 0.25), margin=(30, 30, 50, 60))
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
        tip = f"<title>{escape(gene)}: count FC {format_value(fc)}, area FC {format_value(afc)}</title>"
        colour, r = ("#b2182b", 4) if hit else ("#888888", 2.5)
        cx, cy = ax.px(x), ax.py(no_area_y if y is None else y)
        if y is None:
            ax.parts.append(f"<path d='M{cx - r:.1f},{cy + r:.1f} L{cx + r:.1f},{cy + r:.1f} L{cx:.1f},"
                            f"{cy - r:.1f} Z' fill='none' stroke='{colour}' stroke-width='1.5'>{tip}</path>")
        else:
            ax.parts.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='{r}' fill='{colour}' fill-opacity='0.8'>"
                            f"{tip}</circle>")
        if hit:
            labels.append(f"<text x='{cx + 6:.1f}' y='{cy - 5:.1f}' font-weight='bold'>{escape(gene)}</text>")
    no_area = sum(y is None for y in ys)
    note = (f"<p class='note'>{pts.height} genes; count FC 0 (no nucleus left) at 1/64; genes without a "
            f"nuclear area ({no_area}) as open triangles at the bottom; dashed: the hit rules' thresholds; "
            f"genes without an analysed well ({genes.height - pts.height}) are not drawn.</p>")
    return ax.svg("".join(labels)) + note


def z_prime_plot(plates: pl.DataFrame, z_prime_min: float) -> str:
    """Robust (filled) and classic (open) Z′ of every plate in plate order; under the threshold in red."""
    if plates.height == 0:
        return ""
    n = plates.height
    values = [v for c in ("z_prime", "z_prime_robust") for v in plates[c].drop_nulls()]
    y_lo = max(-2.0, math.floor(min([0.0, *values]) * 2) / 2)
    ax = Axes(max(420, min(1100, 80 + 12 * n)), 260, (-0.5, n - 0.5), (y_lo, 1.0))
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
                            f"<title>{escape(tip)}</title></circle>")
    undefined = plates.filter(pl.col("z_prime_robust").is_null())["plate"].to_list()
    note = ("<p class='note'>Filled: robust Z′ (median, MAD), open: classic (mean, SD); dashed red: the "
            f"threshold {z_prime_min:g}; values under {y_lo:g} are drawn at the bottom edge."
            + (f" No Z′ (fewer than 2 positive or reference wells): {escape(', '.join(undefined))}." if undefined
               else "") + "</p>")
    return ax.svg() + note


def distribution(wells: pl.DataFrame, column: str, title: str, x_range: tuple[int, int]) -> str:
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
    ax = Axes(560, 40 + 45 + row_h * groups.height, (lo, hi), (0, groups.height), margin=(40, 20, 45, 130))

    def lx(v: float) -> float:
        return ax.px(lo if v <= 0 else math.log2(v))

    for v in range(lo, hi + 1):
        ax.x_tick(v, _fc_label(v))
    ax.v_line(0.0, "#999", "2,2")
    ax.parts.append(f"<text x='{ax.left}' y='16' font-weight='bold'>{escape(title)} per well</text>")
    by_group = data.partition_by("group", as_dict=True)
    for i, g in enumerate(groups.iter_rows(named=True)):
        y = ax.top + row_h * i + row_h / 2
        q5, q25, q50, q75, q95 = g["q"]
        ax.parts.append(
            f"<text x='{ax.left - 6}' y='{y + 4}' text-anchor='end'>{escape(g['group'])} ({g['n']})</text>"
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
                            f"fill-opacity='0.6'><title>{escape(plate)} {escape(well)}: {format_value(v)}</title>"
                            "</circle>")
    return "<figure>" + ax.svg() + ("<figcaption>box: quartiles, whiskers: 5–95 %, dots: control wells "
                                    "(samples: box only)</figcaption></figure>")


def controls_per_plate(plates: pl.DataFrame) -> str:
    """Median count FC of mock, untransfected and positive wells on every plate (the reference is 1)."""
    series = [("mock_count_fc", "mock", "#4d9221"), ("untransfected_count_fc", "untransfected", "#762a83"),
              ("positive_count_fc", "positive (PLK1, KIF11)", "#b2182b")]
    series = [s for s in series if s[0] in plates.columns and plates[s[0]].drop_nulls().len()]
    if not series or plates.height == 0:
        return "<p class='note'>No mock, untransfected or positive wells.</p>"
    n = plates.height
    ax = Axes(max(420, min(1100, 80 + 12 * n)), 260, (-0.5, n - 0.5), (-6, 1))
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
                            f"{escape(plate)} {escape(label)}: count FC {format_value(v)}</title></circle>")
        legend.append(f"<span class='key' style='background:{colour}'></span>{escape(label)}")
    legend.append("<span class='key' style='background:#2166ac;border-radius:0;height:2px'></span>"
                  "reference (1 by definition)")
    return (f"<div>{''.join(legend)}</div>" + ax.svg()
            + "<p class='note'>Median count FC of each plate's wells of that kind. The non-targeting reference "
            "is transfected with an siRNA: mock above 1 means the siRNA transfection itself costs cells, "
            "untransfected above mock that the reagent does.</p>")
