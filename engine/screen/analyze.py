"""``nucleiscreen analyze``: a run folder and a layout in, the screen's tables, hits and report out.

Reads ``RUN/images/plate=*/part-*.parquet`` (one row per frame), and when present ``RUN/errors/part-*.parquet``
(failed frames), ``RUN/objects/plate=*/part-*.parquet`` (one row per nucleus: exact median areas),
``RUN/labels/`` (nuclei outlines on the hit frames of the report) and ``RUN/manifest.json`` (the micronucleus
cut-off the run used). Frames flagged by the frame QC (focus, saturation; :class:`FrameQC`) are left out of the
wells. Writes to ``RUN/analysis/`` (or ``out_dir``):

- ``wells.parquet``: one row per plate and well, normalized (:mod:`nucleiscreen.engine.screen.wells` and
  :mod:`nucleiscreen.engine.screen.plates` document the columns),
- ``genes.parquet``: one row per gene of the sample wells,
- ``plates.parquet``: plate QC (reference level, CV, Z′),
- ``controls.parquet``: the control summary,
- ``hits.csv``: the hit genes,
- ``report.html``: the self-contained report.

Each file is written to a temporary name in the same folder and renamed into place, so a reader never sees
half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from nucleiscreen.engine.channels import NUCLEI
from nucleiscreen.engine.runfolder import object_parts
from nucleiscreen.engine.screen.genes import aggregate_genes
from nucleiscreen.engine.screen.hits import call_hits, control_summary
from nucleiscreen.engine.screen.layout import read_layout
from nucleiscreen.engine.screen.plates import normalize_plates
from nucleiscreen.engine.screen.qc import Z_PRIME_MIN, FrameQC, plate_qc
from nucleiscreen.engine.screen.readouts import Readout, check_readouts, default_readouts
from nucleiscreen.engine.screen.report import example_frames, write_report
from nucleiscreen.engine.screen.report.page import picked
from nucleiscreen.engine.screen.report.text import format_table
from nucleiscreen.engine.screen.rules import DEFAULT_RULES, HitRule
from nucleiscreen.engine.screen.wells import aggregate_wells
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA


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
    notes
        What the analysis used beyond the image table (object table, frame QC rules), one line each.
    """

    wells: pl.DataFrame
    genes: pl.DataFrame
    plates: pl.DataFrame
    controls: pl.DataFrame
    hits: pl.DataFrame
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    unplaced_failures: int = 0
    notes: list[str] = field(default_factory=list)


def analyze(run_dir: str | Path, layout_path: str | Path, out_dir: str | Path | None = None,
            rules: Sequence[HitRule] = DEFAULT_RULES, reference: str | Sequence[str] = "negative", *,
            frame_qc: FrameQC | None = FrameQC(), z_prime_min: float = Z_PRIME_MIN, report: bool = True,
            readouts: Sequence[Readout] | None = None) -> AnalysisResult:
    """Aggregate, normalize and call hits for a segmented run, and write the outputs.

    Parameters
    ----------
    run_dir
        The folder written by ``nucleiscreen segment --out RUN``.
    layout_path
        The layout file (see :mod:`nucleiscreen.engine.screen.layout`).
    out_dir
        Where to write; default ``RUN/analysis``.
    rules
        Hit rules, applied to gene medians; default the paper's.
    reference
        The reference wells of each plate (see :func:`~nucleiscreen.engine.screen.plates.normalize_plates`).
    frame_qc
        Which frames to exclude by their focus and saturation measures, when the image table has them;
        None: keep every frame.
    z_prime_min
        Plates with a robust Z′ under this are flagged (``plates.low_z_prime``).
    report
        Write ``report.html`` (reads the hits' frames); False writes the tables only.
    readouts
        The measures normalized besides the nuclei count and area (:mod:`~nucleiscreen.engine.screen.readouts`);
        None: every marker channel's nuclei intensity.

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
    images = _scan(image_files)
    errors = _scan(sorted((run_dir / "errors").glob("part-*.parquet")))
    objects = _scan(object_parts(run_dir))  # committed parts only (engine/runfolder.py)
    layout = read_layout(layout_path)

    notes = []
    settings = _settings(run_dir)
    channel = settings.get("channels", {}).get("nuclei", NUCLEI)
    columns = images.collect_schema().names()
    readouts = default_readouts(columns, channel) if readouts is None else tuple(readouts)
    check_readouts(readouts, columns, objects.collect_schema().names() if objects is not None else None)
    if readouts:
        notes.append("Readouts: " + "; ".join(map(str, readouts)) + ".")
    frame_qc = frame_qc.for_channel(channel) if frame_qc is not None else None
    exclude = frame_qc.exclude(images.collect_schema().names()) if frame_qc is not None else None
    if exclude is not None:
        notes.append("Frame QC: " + "; ".join(frame_qc.describe(images.collect_schema().names())) + ".")
    else:
        notes.append("Frame QC: the image table has no focus or saturation measure (or frame QC is off); "
                     "no frame was excluded.")
    micronucleus_area = float(settings.get("micronucleus_area", DEFAULT_MICRONUCLEUS_AREA))
    if objects is not None:
        notes.append(f"Median nuclear areas are exact, over the object table (nuclei of at least "
                     f"{micronucleus_area:g} px not touching the frame border).")

    wells = aggregate_wells(images, errors, exclude=exclude, objects=objects, micronucleus_area=micronucleus_area,
                            channel=channel, readouts=readouts)
    wells = normalize_plates(wells, layout, reference, source=layout_path, readouts=readouts)
    genes = aggregate_genes(wells, rules, readouts)
    plates = plate_qc(wells, z_prime_min)
    notes += _completeness(run_dir, images, errors)
    lost = plates.filter("no_reference")["plate"].to_list()
    if lost:
        notes.append(f"{len(lost)} plate(s) without usable reference wells (none in the layout, failed, or 0 nuclei): "
                     f"{', '.join(lost[:10])}{' ...' if len(lost) > 10 else ''}; their wells have no fold changes "
                     "and cannot be hits.")
    result = AnalysisResult(
        wells=wells,
        genes=genes,
        plates=plates,
        controls=control_summary(wells, rules, readouts),
        hits=call_hits(genes, rules),
        out_dir=Path(out_dir) if out_dir is not None else run_dir / "analysis",
        unplaced_failures=_unplaced(errors),
        notes=notes,
    )
    result.out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("wells", "genes", "plates", "controls"):
        result.files[name] = _write(getattr(result, name), result.out_dir / f"{name}.parquet")
    result.files["hits"] = _write(result.hits, result.out_dir / "hits.csv")
    if report:
        examples = example_frames(images, wells, result.hits, run_dir, exclude=exclude, channel=channel)
        result.files["report"] = write_report(
            result.out_dir / "report.html", result.wells, result.genes, result.plates, result.hits,
            result.controls, rules, examples=examples, z_prime_min=z_prime_min, notes=notes,
        )
    return result


HIT_COLUMNS = ["gene_symbol", "hit_rules", "wells", "count_fc", "area_fc", "count_ssmd", "nuclei_per_field"]
PLATE_COLUMNS = ["plate", "fields_analysed", "fields_failed", "fields_excluded", "reference_nuclei_per_field",
                 "positive_count_fc", "mock_count_fc", "untransfected_count_fc", "z_prime", "z_prime_robust",
                 "low_z_prime", "no_reference"]
CONTROL_COLUMNS = ["role", "control_name", "reference", "wells", "nuclei_per_field", "count_fc", "area_fc",
                   "count_fc_min", "count_fc_max", "z_prime_robust"]


def format_summary(result: AnalysisResult) -> str:
    """The terminal summary: hit table, control table (controls are never hits), plate QC, where the files are."""
    def pick(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
        return df.select(picked(df, cols))

    lines = ["Hits (genes passing a hit rule; sample wells only; fold changes are medians over the gene's wells):",
             format_table(pick(result.hits, HIT_COLUMNS)),
             "",
             "Controls (reported as controls, never as hits):",
             format_table(pick(result.controls, CONTROL_COLUMNS)),
             "",
             "Plates:",
             format_table(result.plates.select(PLATE_COLUMNS)),
             *result.notes,
             "",
             f"analysis written to {result.out_dir}: " + ", ".join(p.name for p in result.files.values())]
    return "\n".join(lines)


def _scan(files: list[Path]) -> pl.LazyFrame | None:
    """The Parquet parts as one table with every column of any part (a run resumed by a newer engine has parts
    with more columns, e.g. the focus measure); a part without a column gives nulls."""
    if not files:
        return None
    schema: dict[str, pl.DataType] = {}
    for f in files:
        schema.update(pl.read_parquet_schema(f))
    return pl.scan_parquet(files, schema=schema, hive_partitioning=False, missing_columns="insert")


def _settings(run_dir: Path) -> dict:
    """The run's settings from its manifest (micronucleus cut-off, channels), else none (the engine's defaults)."""
    try:
        settings = json.loads((run_dir / "manifest.json").read_text()).get("settings", {})
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _completeness(run_dir: Path, images: pl.LazyFrame, errors: pl.LazyFrame | None) -> list[str]:
    """A note on the plates whose frames are not all in the image or error table, against the frames per plate that
    ``segment`` discovered (its manifest; an unfinished run, or shards not all done); none when all are there."""
    try:
        expected = json.loads((run_dir / "manifest.json").read_text())["discovery"]["plates"]
    except (OSError, KeyError, ValueError):
        return []
    tables = [t.select("Metadata_Plate", "ImageNumber") for t in (images, errors) if t is not None]
    done = dict(pl.concat(tables).unique().group_by("Metadata_Plate").len().collect().iter_rows())
    missing = sorted(p for p in expected if not done.get(p))
    short = sorted(f"{p} {done[p]}/{n}" for p, n in expected.items() if 0 < done.get(p, 0) < n)
    if not missing and not short:
        return []
    parts = ([f"{len(missing)} plate(s) missing ({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''})"]
             if missing else []) + ([f"{len(short)} plate(s) incomplete ({', '.join(short[:10])}"
                                     f"{' ...' if len(short) > 10 else ''} frames)"] if short else [])
    return [f"Incomplete run: {'; '.join(parts)}; re-run `nucleiscreen segment` (or the missing shards) to finish "
            "them."]


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
