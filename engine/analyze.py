"""``nucleiscreen analyze``: a run folder and a layout in, the screen's tables, hits and report out.

Reads ``RUN/images/plate=*/part-*.parquet`` (one row per frame) and ``RUN/errors/part-*.parquet`` (failed
frames, when present), and writes to ``RUN/analysis/`` (or ``out_dir``):

- ``wells.parquet``: one row per plate and well, normalized (:mod:`nucleiscreen.engine.screen` documents the
  columns),
- ``genes.parquet``: one row per gene of the sample wells,
- ``plates.parquet``: plate QC (reference level, CV, Z′),
- ``controls.parquet``: the control summary,
- ``hits.csv``: the hit genes,
- ``report.html``: the self-contained report.

Each file is written to a temporary name in the same folder and renamed into place, so a reader never sees
half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from nucleiscreen.engine.hits import DEFAULT_RULES, HitRule, call_hits, control_summary, format_table
from nucleiscreen.engine.layout import read_layout
from nucleiscreen.engine.report import write_report
from nucleiscreen.engine.screen import aggregate_genes, aggregate_wells, normalize_plates, plate_qc
from nucleiscreen.errors import UserError


@dataclass
class AnalysisResult:
    """The tables of one analysis and where they were written.

    Attributes
    ----------
    wells, genes, plates, controls, hits
        As written to ``wells.parquet``, ``genes.parquet``, ``plates.parquet``, ``controls.parquet``,
        ``hits.csv``.
    out_dir
        The folder written.
    files
        Output name (``"wells"``, ``"genes"``, ``"plates"``, ``"controls"``, ``"hits"``, ``"report"``) ->
        path.
    unplaced_failures
        Rows of the error table without a plate and well (they cannot be counted against a well).
    """

    wells: pl.DataFrame
    genes: pl.DataFrame
    plates: pl.DataFrame
    controls: pl.DataFrame
    hits: pl.DataFrame
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    unplaced_failures: int = 0


def analyze(run_dir: str | Path, layout_path: str | Path, out_dir: str | Path | None = None,
            rules: Sequence[HitRule] = DEFAULT_RULES, reference: str | Sequence[str] = "negative"
            ) -> AnalysisResult:
    """Aggregate, normalize and call hits for a segmented run, and write the outputs.

    Parameters
    ----------
    run_dir
        The folder written by ``nucleiscreen segment --out RUN``.
    layout_path
        The layout file (see :mod:`nucleiscreen.engine.layout`).
    out_dir
        Where to write; default ``RUN/analysis``.
    rules
        Hit rules, applied to gene medians; default the paper's.
    reference
        The reference wells of each plate (see :func:`~nucleiscreen.engine.screen.normalize_plates`).

    Returns
    -------
    AnalysisResult

    Raises
    ------
    UserError
        No run folder or no image table in it, or any layout/normalization problem (see ``read_layout`` and
        ``normalize_plates``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist: "
                        "give the folder written by `nucleiscreen segment --out`")
    image_files = sorted((run_dir / "images").glob("plate=*/part-*.parquet"))
    if not image_files:
        raise UserError(f"no image table under {run_dir / 'images'}: run `nucleiscreen segment` first")
    images = pl.scan_parquet(image_files, hive_partitioning=False)
    error_files = sorted((run_dir / "errors").glob("part-*.parquet"))
    errors = None
    if error_files:
        errors = pl.scan_parquet(error_files, hive_partitioning=False, missing_columns="insert")
    layout = read_layout(layout_path)

    wells = aggregate_wells(images, errors)
    wells = normalize_plates(wells, layout, reference, source=layout_path)
    genes = aggregate_genes(wells, rules)
    result = AnalysisResult(
        wells=wells,
        genes=genes,
        plates=plate_qc(wells),
        controls=control_summary(wells, rules),
        hits=call_hits(genes, rules),
        out_dir=Path(out_dir) if out_dir is not None else run_dir / "analysis",
        unplaced_failures=_unplaced(errors),
    )
    result.out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("wells", "genes", "plates", "controls"):
        result.files[name] = _write(getattr(result, name), result.out_dir / f"{name}.parquet")
    result.files["hits"] = _write(result.hits, result.out_dir / "hits.csv")
    result.files["report"] = write_report(result.out_dir / "report.html", result.wells, result.genes,
                                          result.plates, result.hits, result.controls, rules)
    return result


HIT_COLUMNS = ["gene_symbol", "hit_rules", "wells", "count_fc", "area_fc", "nuclei_per_field"]
CONTROL_COLUMNS = ["role", "control_name", "reference", "wells", "nuclei_per_field", "count_fc", "area_fc",
                   "count_fc_min", "count_fc_max"]


def format_summary(result: AnalysisResult) -> str:
    """The terminal summary: hit table, control table (controls are never hits), plate QC, where the files are."""
    def pick(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
        return df.select([c for c in cols if c in df.columns] + [c for c in df.columns if c.startswith("wells_pass")])

    lines = ["Hits (genes passing a hit rule; sample wells only; fold changes are medians over the gene's wells):",
             format_table(pick(result.hits, HIT_COLUMNS)),
             "",
             "Controls (reported as controls, never as hits):",
             format_table(pick(result.controls, CONTROL_COLUMNS)),
             "",
             "Plates:",
             format_table(result.plates),
             "",
             f"analysis written to {result.out_dir}: " + ", ".join(p.name for p in result.files.values())]
    return "\n".join(lines)


def _unplaced(errors: pl.LazyFrame | None) -> int:
    if errors is None:
        return 0
    schema = errors.collect_schema()
    if "Metadata_Plate" not in schema or "Metadata_Well" not in schema:
        return errors.select(pl.len()).collect().item()
    placed = pl.col("Metadata_Plate").is_not_null() & pl.col("Metadata_Well").is_not_null()
    return errors.select((~placed).sum()).collect().item()


def _write(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` as Parquet or CSV (by suffix) under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".csv":
        df.write_csv(tmp)
    else:
        df.write_parquet(tmp)
    os.replace(tmp, path)
    return path
