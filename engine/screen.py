"""From frame rows to wells, plates and genes: aggregation, per-plate normalization and plate QC.

Everything here is a polars expression or group-by; there are no Python loops over rows.

Well table (:func:`aggregate_wells`, one row per plate and well)
----------------------------------------------------------------
plate, well, row, column
    ``Metadata_Plate``, ``Metadata_Well`` (``B07``), its row letter and column number.
fields_analysed
    Frames of the well in the image table, less the excluded ones.
fields_failed
    Frames of the well in the error table (each file once; a file that also has an image row, e.g. it
    succeeded on a retry, is not failed). A failed frame never counts as zero nuclei: it is simply not a field
    analysed.
fields_excluded
    Frames in the image table dropped by the ``exclude`` expression (e.g. a focus/saturation QC flag).
nuclei, nuclei_nonborder, micronuclei
    Sums over analysed fields of ``Count_Nuclei`` (all nuclei, border-touching included),
    ``Count_Nuclei_NonBorder`` and ``Count_Micronuclei``. Null when no field was analysed.
nuclei_per_field
    ``nuclei / fields_analysed``: the count measure that is normalized, so a failed field does not look like
    cell death. Null when no field was analysed; 0 when fields were analysed and held no nucleus.
nuclei_area_total
    Sum of ``Total_Nuclei_AreaShape_Area`` (px, non-border nuclei).
nuclei_area_mean
    Object-weighted mean area of the non-border nuclei, exact: ``sum(Total_Nuclei_AreaShape_Area) /
    sum(Count_Nuclei_NonBorder)``, the same number as averaging the areas of every non-border nucleus of the
    well. Null when the well has no non-border nucleus (never NaN, never 0).
nuclei_area_median
    Median area of the well's non-border nuclei (``AreaShape_Area >= micronucleus_area``, not
    ``TouchesBorder``) over the object table, exact; null without an object table (``segment --objects``) or
    without a non-border nucleus.
nuclei_area_median_fields
    Median over the well's fields of each field's median nucleus area (``Median_Nuclei_AreaShape_Area``). An
    approximation of ``nuclei_area_median`` that needs only the image table.
nuclei_intensity_mean
    Object-weighted mean of the nuclei's mean DNA intensity (raw units): ``sum(mean_f * n_f) / sum(n_f)`` over
    fields ``f`` with ``n_f`` non-border nuclei of mean intensity ``mean_f``. Null when there is no non-border
    nucleus.
micronuclei_per_nucleus
    ``micronuclei / nuclei``; null when there is no nucleus.

:func:`normalize_plates` adds, from the layout: gene_symbol, role, control_name, sirna_id, entrez_id (null for
a well that the layout does not list), and:

is_reference
    The well is one of its plate's reference wells (by default the non-targeting OTP wells).
count_fc, area_fc
    ``nuclei_per_field`` and ``nuclei_area_mean`` divided by the median of the same measure over the plate's
    reference wells (cellHTS2 ``normalizePlates(method="negatives", scale="multiplicative")``). A well without
    nuclei has ``count_fc = 0`` and ``area_fc`` null.
log2_count_fc, log2_area_fc
    ``log2`` of the fold changes; null where the fold change is 0 or null (no ``-inf``).
count_robust_z
    ``(nuclei_per_field - median_S) / (1.4826 * MAD_S)`` over the plate's sample wells ``S``; null when
    ``MAD_S = 0`` (half or more of the sample wells share one value) rather than infinite.
count_ssmd, area_ssmd
    Robust SSMD of a well without replicates against the plate's reference wells ``R`` (Zhang 2011):
    ``(l - median_R(l)) / (sqrt(2) * 1.4826 * MAD_R(l))`` with ``l`` the log2 fold change. For the count,
    a well without any nucleus takes half a nucleus over its analysed fields (the log of 0 does not exist,
    and the strongest loss must keep a score); for the area such a well has none (null). Null where
    ``MAD_R = 0``.
count_b_score
    B-score of the count (Brideau 2003) on the plate's sample wells: the residual of Tukey's median polish of
    ``l`` (the floored log2 count FC of ``count_ssmd``) over the plate's rows and columns, divided by
    ``1.4826 * MAD`` of the plate's residuals. It removes row and column (edge, dispensing) effects. Null for
    wells that are not samples and where the MAD is 0. The polish is R's ``medpolish`` (cellHTS2): at most
    10 sweeps of row then column medians, stopped when the sum of absolute residuals changes by less than
    1 %.

Medians skip nulls; with an even number of values the median is the mean of the two middle ones. MAD is the
median absolute deviation from the median (unscaled); ``MAD_SCALE`` scales it to a normal standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from nucleiscreen.engine.hits import DEFAULT_RULES, HitRule, check_rules
from nucleiscreen.engine.layout import expand_layout, is_nontargeting, name_key, negative_kind, well_parts
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA

MAD_SCALE = 1.4826
"""Scales the median absolute deviation to the standard deviation of a normal distribution."""

IMAGE_REQUIRED = (
    "Metadata_Plate", "Metadata_Well", "Count_Nuclei", "Count_Nuclei_NonBorder",
    "Total_Nuclei_AreaShape_Area",
)
IMAGE_OPTIONAL = {
    "Count_Micronuclei": pl.Int64,
    "Median_Nuclei_AreaShape_Area": pl.Float64,
    "Mean_Nuclei_Intensity_MeanIntensity_DNA": pl.Float64,
    "PathName_DNA": pl.String,
    "FileName_DNA": pl.String,
}
OBJECT_REQUIRED = ("Metadata_Plate", "Metadata_Well", "AreaShape_Area", "TouchesBorder")
ERROR_COLUMNS = {"PathName_DNA": pl.String, "FileName_DNA": pl.String,
                 "Metadata_Plate": pl.String, "Metadata_Well": pl.String}

Frame = pl.DataFrame | pl.LazyFrame

Z_PRIME_MIN = 0.5
"""Plates whose robust Z′ is under this are flagged (1 > Z′ >= 0.5: an excellent assay, Zhang 1999)."""

POLISH_ITERATIONS = 10
POLISH_EPS = 0.01


@dataclass(frozen=True)
class FrameQC:
    """Which frames of the image table to leave out of the wells: out of focus or saturated.

    The rules read CellProfiler's MeasureImageQuality columns (``kernels/quality.py`` writes them); a rule
    whose column the image table does not have is skipped, so the same settings work on runs written before
    the engine measured them. A frame is excluded when any rule holds; excluded frames are counted in
    ``fields_excluded``, never as zero nuclei. A null measure excludes nothing.

    The focus score (normalized variance of the whole frame) grows with the number of nuclei in the frame: a
    frame of a well where every cell died scores almost 0 although it is perfectly sharp. So focus is judged
    against the well's own frames, and only in wells dense enough for the comparison to mean something; a
    plate-wide cut would throw out exactly the frames of the strongest hits.

    Attributes
    ----------
    focus_column
        The focus measure, larger is sharper.
    min_focus_ratio
        Exclude a frame whose focus is under this fraction of the median focus of its well's frames (the
        autofocus missed that field), in wells whose median frame has at least ``focus_min_nuclei`` nuclei
        (``Count_Nuclei``). None: no such rule.
    focus_min_nuclei
        See ``min_focus_ratio``.
    min_focus
        Exclude a frame whose focus is under this value, whatever its well (the measure's own units, to be
        chosen per screen; catches a well out of focus in every field). None: no such rule.
    saturation_column
        The percentage of the frame's pixels at its maximum value (CellProfiler's ``PercentMaximal``; about
        one pixel's worth in a frame without saturation, 100 % in a blank frame).
    max_saturated_percent
        Exclude a frame with more of its pixels at the maximum than this. None: no such rule.
    """

    focus_column: str = "ImageQuality_FocusScore_DNA"
    min_focus_ratio: float | None = 0.2
    focus_min_nuclei: float = 20.0
    min_focus: float | None = None
    saturation_column: str = "ImageQuality_PercentMaximal_DNA"
    max_saturated_percent: float | None = 1.0

    def exclude(self, columns: Collection[str]) -> pl.Expr | None:
        """The boolean expression over the image table that marks frames to exclude, or None when no rule
        applies to a table with these ``columns``."""
        flags = []
        if self.focus_column in columns:
            focus = pl.col(self.focus_column).cast(pl.Float64).fill_nan(None)
            if self.min_focus is not None:
                flags.append(focus < self.min_focus)
            if self.min_focus_ratio is not None:
                well = ("Metadata_Plate", "Metadata_Well")
                dense = pl.col("Count_Nuclei").median().over(*well) >= self.focus_min_nuclei
                flags.append(dense & (focus < self.min_focus_ratio * focus.median().over(*well)))
        if self.saturation_column in columns and self.max_saturated_percent is not None:
            flags.append(pl.col(self.saturation_column).cast(pl.Float64).fill_nan(None)
                         > self.max_saturated_percent)
        if not flags:
            return None
        return pl.any_horizontal(f.fill_null(False) for f in flags)

    def describe(self, columns: Collection[str]) -> list[str]:
        """The rules that apply to a table with these ``columns``, in words (for the report)."""
        rules = []
        if self.focus_column in columns:
            if self.min_focus is not None:
                rules.append(f"{self.focus_column} under {self.min_focus:g}")
            if self.min_focus_ratio is not None:
                rules.append(f"{self.focus_column} under {self.min_focus_ratio:g} x the median of the well's "
                             f"frames (wells of at least {self.focus_min_nuclei:g} nuclei per frame)")
        if self.saturation_column in columns and self.max_saturated_percent is not None:
            rules.append(f"{self.saturation_column} over {self.max_saturated_percent:g} %")
        return [f"frames with {r} are excluded" for r in rules]


def aggregate_wells(images: Frame, errors: Frame | None = None, *, exclude: pl.Expr | None = None,
                    objects: Frame | None = None, micronucleus_area: float = DEFAULT_MICRONUCLEUS_AREA,
                    ) -> pl.DataFrame:
    """Aggregate the image table (one row per frame) to one row per plate and well.

    Parameters
    ----------
    images
        The image table (columns as written by ``nucleiscreen segment``; at least ``IMAGE_REQUIRED``).
    errors
        The error table (frames that failed), or None. Rows without ``Metadata_Plate``/``Metadata_Well``
        cannot be placed in a well and are ignored here.
    exclude
        A boolean expression over the image table marking frames to leave out (counted in
        ``fields_excluded``); null counts as false. :meth:`FrameQC.exclude` makes one from the focus and
        saturation columns.
    objects
        The object table (``segment --objects``: one row per object, at least ``OBJECT_REQUIRED``), or None.
        Gives the exact ``nuclei_area_median``; objects of excluded frames (matched on plate, well and
        ``Metadata_Site``) are left out.
    micronucleus_area
        The cut-off the run used (its manifest's ``micronucleus_area``): smaller objects of the object table
        are micronuclei, not nuclei.

    Returns
    -------
    polars.DataFrame
        The well table described in the module docstring, sorted by plate, row, column. A well whose every
        frame failed is present, with ``fields_analysed = 0`` and null measures.
    """
    frames = images.lazy()
    schema = _require(frames, IMAGE_REQUIRED, "image", "`nucleiscreen segment`")
    frames = frames.with_columns(
        pl.lit(None, dtype).alias(name) for name, dtype in IMAGE_OPTIONAL.items() if name not in schema
    ).with_columns(
        pl.col("Total_Nuclei_AreaShape_Area", "Median_Nuclei_AreaShape_Area",
               "Mean_Nuclei_Intensity_MeanIntensity_DNA").cast(pl.Float64).fill_nan(None),
        _excluded=pl.lit(False) if exclude is None else exclude.fill_null(False),
    )

    def kept(name: str) -> pl.Expr:  # a measure of the frames that are analysed, null for excluded frames
        return pl.when(~pl.col("_excluded")).then(pl.col(name))

    nonborder = kept("Count_Nuclei_NonBorder")
    intensity = kept("Mean_Nuclei_Intensity_MeanIntensity_DNA")
    keys = {"plate": pl.col("Metadata_Plate").cast(pl.String), "well": pl.col("Metadata_Well").cast(pl.String)}
    analysed = frames.group_by(**keys).agg(
        fields_analysed=(~pl.col("_excluded")).sum().cast(pl.Int64),
        fields_excluded=pl.col("_excluded").sum().cast(pl.Int64),
        nuclei=kept("Count_Nuclei").sum().cast(pl.Int64),
        nuclei_nonborder=nonborder.sum().cast(pl.Int64),
        micronuclei=kept("Count_Micronuclei").sum().cast(pl.Int64),
        nuclei_area_total=kept("Total_Nuclei_AreaShape_Area").sum(),
        nuclei_area_median_fields=kept("Median_Nuclei_AreaShape_Area").median(),
        _intensity_sum=(intensity * nonborder).sum(),
        _intensity_weight=pl.when(intensity.is_not_null()).then(nonborder).sum(),
    )

    wells = analysed
    if errors is not None:
        wells = wells.join(_failed_fields(errors, frames), on=["plate", "well"], how="full", coalesce=True)
    else:
        wells = wells.with_columns(fields_failed=pl.lit(0, pl.Int64))
    if objects is not None:
        medians = _object_medians(objects, frames, micronucleus_area)
        wells = wells.join(medians, on=["plate", "well"], how="left")
    else:
        wells = wells.with_columns(nuclei_area_median=pl.lit(None, pl.Float64))

    any_field = pl.col("fields_analysed") > 0
    has_nonborder = pl.col("nuclei_nonborder") > 0
    row, column = well_parts(pl.col("well"))
    wells = wells.with_columns(
        pl.col("fields_analysed", "fields_excluded", "fields_failed").fill_null(0),
    ).with_columns(
        pl.when(any_field).then(pl.col("nuclei", "nuclei_nonborder", "micronuclei", "nuclei_area_total")),
        pl.when(pl.col("nuclei_nonborder") > 0).then(pl.col("nuclei_area_median")),
        row=row,
        column=column,
    ).with_columns(
        nuclei_per_field=pl.when(any_field).then(pl.col("nuclei") / pl.col("fields_analysed")),
        nuclei_area_mean=pl.when(has_nonborder)
        .then(pl.col("nuclei_area_total") / pl.col("nuclei_nonborder")),
        nuclei_intensity_mean=pl.when(pl.col("_intensity_weight") > 0)
        .then(pl.col("_intensity_sum") / pl.col("_intensity_weight")),
        micronuclei_per_nucleus=pl.when(pl.col("nuclei") > 0).then(pl.col("micronuclei") / pl.col("nuclei")),
    )
    return wells.select(WELL_COLUMNS).sort("plate", "row", "column").collect()


WELL_COLUMNS = (
    "plate", "well", "row", "column", "fields_analysed", "fields_failed", "fields_excluded",
    "nuclei", "nuclei_nonborder", "micronuclei", "nuclei_per_field", "nuclei_area_total", "nuclei_area_mean",
    "nuclei_area_median", "nuclei_area_median_fields", "nuclei_intensity_mean", "micronuclei_per_nucleus",
)
"""The columns of :func:`aggregate_wells`, in order."""


def _require(table: pl.LazyFrame, columns, what: str, writer: str) -> pl.Schema:
    """The table's schema, or a one-line ``UserError`` naming the columns it lacks."""
    schema = table.collect_schema()
    missing = [c for c in columns if c not in schema]
    if missing:
        raise UserError(f"the {what} table has no column {', '.join(missing)}: was it written by {writer}?")
    return schema


def _object_medians(objects: Frame, frames: pl.LazyFrame, micronucleus_area: float) -> pl.LazyFrame:
    """Exact median area of the non-border nuclei per plate and well, over the object table, less the objects
    of excluded frames."""
    objects = objects.lazy()
    schema = _require(objects, OBJECT_REQUIRED, "object", "`nucleiscreen segment --objects`")
    nuclei = objects.filter(
        (pl.col("AreaShape_Area") >= micronucleus_area) & ~pl.col("TouchesBorder").fill_null(False)
    )
    keys = ["Metadata_Plate", "Metadata_Well"]
    if "Metadata_Site" in schema and "Metadata_Site" in frames.collect_schema():
        keys.append("Metadata_Site")
    typed = [pl.col(k).cast(pl.String if k != "Metadata_Site" else pl.Int64) for k in keys]
    excluded = frames.filter("_excluded").select(typed).unique().collect()  # a handful of frames, if any
    if excluded.height:
        nuclei = nuclei.with_columns(typed).join(excluded.lazy(), on=keys, how="anti")
    # An object table has ~60 rows per frame (80 M for a genome-wide screen): categorical keys halve the
    # memory and time of the group-by.
    return nuclei.group_by(
        plate=pl.col("Metadata_Plate").cast(pl.Categorical), well=pl.col("Metadata_Well").cast(pl.Categorical),
    ).agg(
        nuclei_area_median=pl.col("AreaShape_Area").median(),
    ).with_columns(pl.col("plate", "well").cast(pl.String))


def _failed_fields(errors: Frame, frames: pl.LazyFrame) -> pl.LazyFrame:
    """Failed frames per plate and well: distinct files of the error table that have no image row."""
    errors = errors.lazy()
    schema = errors.collect_schema()
    errors = errors.with_columns(
        pl.lit(None, dtype).alias(name) for name, dtype in ERROR_COLUMNS.items() if name not in schema
    ).select(pl.col(name).cast(dtype) for name, dtype in ERROR_COLUMNS.items())
    file = ["PathName_DNA", "FileName_DNA"]
    succeeded = frames.select(pl.col(file).cast(pl.String)).filter(pl.col("FileName_DNA").is_not_null())
    return (
        errors.filter(pl.col("Metadata_Plate").is_not_null() & pl.col("Metadata_Well").is_not_null())
        .join(succeeded, on=file, how="anti", nulls_equal=True)
        .unique(subset=["Metadata_Plate", "Metadata_Well", *file])
        .group_by(plate="Metadata_Plate", well="Metadata_Well")
        .agg(fields_failed=pl.len().cast(pl.Int64))
    )


def normalize_plates(wells: pl.DataFrame, layout: pl.DataFrame, reference: str | Sequence[str] = "negative",
                     *, source: str | Path | None = None) -> pl.DataFrame:
    """Join the layout and normalize every well to its plate's reference wells.

    Parameters
    ----------
    wells
        From :func:`aggregate_wells`.
    layout
        From :func:`~nucleiscreen.engine.layout.read_layout` (wildcards are resolved here for the plates of
        ``wells``).
    reference
        ``"negative"``: the negative wells named as non-targeting (OTP, non-targeting, NT) if the layout names
        any, else the negative wells that are neither mock nor untransfected (e.g. ``siNeg``), else every
        negative well. Or control names (one or a list, matched case-, space- and
        dash-insensitively against ``control_name``, else ``gene_symbol``), e.g. ``["OTP", "mock"]``.
    source
        The layout file, named in error messages.

    Returns
    -------
    polars.DataFrame
        ``wells`` with the layout columns, ``is_reference``, ``count_fc``, ``area_fc``, ``log2_count_fc``,
        ``log2_area_fc``, ``count_robust_z``, ``count_ssmd``, ``area_ssmd`` and ``count_b_score`` (the module
        docstring defines each). For plate ``p`` with reference wells ``R_p`` and sample wells ``S_p``::

            count_fc = nuclei_per_field / median(nuclei_per_field over R_p)
            area_fc  = nuclei_area_mean / median(nuclei_area_mean over R_p)
            count_robust_z = (nuclei_per_field - median_S) / (1.4826 * median(|x - median_S| over S_p))
            l          = log2(max(nuclei, 1/2) / fields_analysed / median(nuclei_per_field over R_p))
            count_ssmd = (l - median_R(l)) / (sqrt(2) * 1.4826 * MAD_R(l))

        Sorted by plate, row, column.

    Raises
    ------
    UserError
        A plate of ``wells`` is missing from the layout; a reference name is not in the layout; no plate has a
        usable reference (a reference well with analysed fields and a median above 0 nuclei per field). Plates
        without one, among plates with one, get null fold changes and scores and are flagged by :func:`plate_qc`.
    """
    layout = expand_layout(layout, wells["plate"].unique(), source=source)
    df = wells.join(layout.drop("row", "column"), on=["plate", "well"], how="left")
    df = df.with_columns(is_reference=_reference(layout, reference, source).fill_null(False))

    count, area = pl.col("nuclei_per_field"), pl.col("nuclei_area_mean")
    is_sample = pl.col("role") == "sample"
    sample = count.filter(is_sample)
    plates = df.group_by("plate").agg(
        _ref_wells=pl.col("is_reference").sum(),
        _ref_count=count.filter("is_reference").median(),
        _ref_area=area.filter("is_reference").median(),
        _sample_median=sample.median(),
        _sample_mad=_mad(sample),
    )
    _check_references(plates, reference)
    # A plate whose reference wells are missing, failed or have no nuclei has no fold changes (null, never inf);
    # plate_qc flags it in no_reference.
    plates = plates.with_columns(_ref_count=pl.when(pl.col("_ref_count") > 0).then("_ref_count"),
                                 _ref_area=pl.when(pl.col("_ref_count") > 0).then("_ref_area"))

    floored = pl.max_horizontal(pl.col("nuclei").cast(pl.Float64), 0.5) / pl.col("fields_analysed")
    df = df.join(plates, on="plate").with_columns(
        count_fc=count / pl.col("_ref_count"),
        area_fc=area / pl.col("_ref_area"),
        _l=pl.when(pl.col("fields_analysed") > 0).then((floored / pl.col("_ref_count")).log(2)),
    ).with_columns(
        log2_count_fc=_log2(pl.col("count_fc")),
        log2_area_fc=_log2(pl.col("area_fc")),
        count_robust_z=_scaled(count - pl.col("_sample_median"), MAD_SCALE * pl.col("_sample_mad")),
    ).with_columns(
        count_ssmd=_ssmd(pl.col("_l")),
        area_ssmd=_ssmd(pl.col("log2_area_fc")),
    )
    residuals = median_polish(df.filter(is_sample & pl.col("_l").is_not_null())
                              .select("plate", "row", "column", "well", value="_l"))
    b_scores = residuals.with_columns(
        count_b_score=_scaled(pl.col("residual"), MAD_SCALE * _mad(pl.col("residual")).over("plate")),
    ).select("plate", "well", "count_b_score")
    df = df.join(b_scores, on=["plate", "well"], how="left")
    return df.drop("_l", *plates.drop("plate").columns).sort("plate", "row", "column")


def median_polish(values: pl.DataFrame, *, max_iter: int = POLISH_ITERATIONS, eps: float = POLISH_EPS
                  ) -> pl.DataFrame:
    """Tukey's median polish of each plate's values over its rows and columns, as R's ``medpolish``.

    Parameters
    ----------
    values
        Columns ``plate``, ``row``, ``column`` and ``value`` (float; nulls are skipped, as
        ``medpolish(na.rm = TRUE)``); any other columns are kept.
    max_iter, eps
        Each sweep subtracts from every value the median of its row, then the median of its column; a plate
        stops after the sweep where ``sum |residual|`` changed by less than ``eps`` times itself (or is 0), at
        the latest after ``max_iter`` sweeps.

    Returns
    -------
    polars.DataFrame
        ``values`` with ``value`` replaced by ``residual``: value - overall - row effect - column effect.
    """
    df = values.with_columns(
        residual=pl.col("value").cast(pl.Float64), _done=pl.lit(False), _before=pl.lit(0.0),
    ).drop("value")
    z = pl.col("residual")
    for _ in range(max_iter):
        df = df.with_columns(residual=pl.when("_done").then(z).otherwise(z - z.median().over("plate", "row")))
        df = df.with_columns(residual=pl.when("_done").then(z).otherwise(z - z.median().over("plate", "column")))
        total = z.abs().sum().over("plate")
        df = df.with_columns(
            _done=pl.col("_done") | (total == 0) | ((total - pl.col("_before")).abs() < eps * total),
            _before=total,
        )
        if df["_done"].all():
            break
    return df.drop("_done", "_before")


def _mad(x: pl.Expr) -> pl.Expr:
    """Median absolute deviation from the median (unscaled)."""
    return (x - x.median()).abs().median()


def _scaled(x: pl.Expr, spread: pl.Expr) -> pl.Expr:
    """``x / spread``, null where the spread is 0 or null (no infinite scores)."""
    return pl.when(spread > 0).then(x / spread)


def _ssmd(l: pl.Expr) -> pl.Expr:  # noqa: E741 - the l of the formula
    """Robust SSMD of each well's ``l`` against the plate's reference wells."""
    ref = l.filter("is_reference")
    centre, spread = ref.median().over("plate"), _mad(ref).over("plate")
    return _scaled(l - centre, math.sqrt(2) * MAD_SCALE * spread)


def _log2(x: pl.Expr) -> pl.Expr:
    return pl.when(x > 0).then(x.log(2))


def _reference(layout: pl.DataFrame, reference: str | Sequence[str], source: str | Path | None) -> pl.Expr:
    """The expression that marks reference wells (over the joined layout columns)."""
    name = pl.coalesce("control_name", "gene_symbol")
    negative = pl.col("role") == "negative"
    if isinstance(reference, str) and reference == "negative":
        # mock and untransfected wells lack the siRNA: they stay beside the reference unless they are the
        # only negative controls
        for candidates in (negative & is_nontargeting(name), negative & negative_kind(name).is_null()):
            if layout.select(candidates.any()).item():
                return candidates
        return negative
    wanted = [reference] if isinstance(reference, str) else list(reference)
    keys = pl.select(name_key(pl.lit(pl.Series(wanted, dtype=pl.String)))).to_series()
    known = set(layout.select(name_key(name).alias("key"))["key"].drop_nulls())
    unknown = [w for w, k in zip(wanted, keys, strict=True) if k not in known]
    if unknown:
        controls = layout.filter(pl.col("role") != "sample").select(name.unique().drop_nulls().sort())
        raise UserError(
            f"{source or 'the layout'}: no well named {', '.join(unknown)} to use as the reference; "
            f"control names are: {', '.join(controls.to_series().to_list()) or 'none'}"
        )
    return name_key(name).is_in(keys.to_list())


def _check_references(plates: pl.DataFrame, reference: str | Sequence[str]) -> None:
    """Raise when no plate has a usable reference; plates without one are flagged by ``plate_qc`` instead (one
    lost plate of a genome-wide screen must not stop the analysis of the others)."""
    if isinstance(reference, str):
        what = "OTP/negative" if reference == "negative" else reference
    else:
        what = ", ".join(reference)
    usable = (pl.col("_ref_wells") > 0) & (pl.col("_ref_count") > 0)
    if plates.filter(usable).height:
        return
    none = plates.filter(pl.col("_ref_wells") == 0)["plate"].sort()
    if none.len():
        raise UserError(f"plate {', '.join(none.to_list())}: no well of the run is a reference ({what}) well: "
                        "check the layout's control wells, or choose the reference controls")
    p = plates.sort("plate").row(0, named=True)
    state = "no analysed field" if p["_ref_count"] is None else "a median of 0 nuclei per field"
    raise UserError(f"plate {p['plate']}: its {p['_ref_wells']} reference ({what}) wells have {state}, "
                    "so nothing can be normalized to them: check the plate's frames and errors, or "
                    "choose other reference controls")


def aggregate_genes(wells: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES) -> pl.DataFrame:
    """Combine each gene's sample wells (its siRNAs, across plates).

    Parameters
    ----------
    wells
        From :func:`normalize_plates`.
    rules
        Hit rules; each adds ``wells_pass_<rule.name>``, the number of the gene's wells that pass the rule on
        their own fold changes.

    Returns
    -------
    polars.DataFrame
        One row per gene symbol of the sample wells, sorted by gene: ``gene_symbol``, ``entrez_id`` (the first
        given), ``wells``, ``wells_analysed`` (wells with a count FC), ``plates``, ``sirnas`` (distinct siRNA
        ids), ``count_fc`` (median over wells), ``area_fc`` (median over the wells that have an area: a well
        without nuclei has none), ``log2_count_fc`` and ``log2_area_fc`` (of those medians),
        ``count_robust_z``, ``count_ssmd``, ``area_ssmd``, ``count_b_score`` and ``nuclei_per_field``
        (medians over the wells that have one), then the rules' pass counts. The
        gene-level ``count_fc`` and ``area_fc`` carry the well-level names so that one hit rule reads the same
        on wells and on genes.

    Raises
    ------
    UserError
        A rule reads a column that ``wells`` does not have.
    """
    check_rules(rules, wells, "well table")
    genes = wells.filter(pl.col("role") == "sample").group_by("gene_symbol").agg(
        entrez_id=pl.col("entrez_id").drop_nulls().first(),
        wells=pl.len().cast(pl.Int64),
        wells_analysed=pl.col("count_fc").is_not_null().sum().cast(pl.Int64),
        plates=pl.col("plate").n_unique().cast(pl.Int64),
        sirnas=pl.col("sirna_id").drop_nulls().n_unique().cast(pl.Int64),
        count_fc=pl.col("count_fc").median(),
        area_fc=pl.col("area_fc").median(),
        count_robust_z=pl.col("count_robust_z").median(),
        count_ssmd=pl.col("count_ssmd").median(),
        area_ssmd=pl.col("area_ssmd").median(),
        count_b_score=pl.col("count_b_score").median(),
        nuclei_per_field=pl.col("nuclei_per_field").median(),
        **{f"wells_pass_{rule.name}": rule.expr().sum().cast(pl.Int64) for rule in rules},
    )
    return genes.with_columns(
        log2_count_fc=_log2(pl.col("count_fc")),
        log2_area_fc=_log2(pl.col("area_fc")),
    ).select(
        "gene_symbol", "entrez_id", "wells", "wells_analysed", "plates", "sirnas", "count_fc", "area_fc",
        "log2_count_fc", "log2_area_fc", "count_robust_z", "count_ssmd", "area_ssmd", "count_b_score",
        "nuclei_per_field", pl.col("^wells_pass_.*$"),
    ).sort("gene_symbol")


def _z_prime(pos: pl.Expr, ref: pl.Expr, robust: bool) -> pl.Expr:
    """Z′ between the values ``pos`` and ``ref`` of one group (see ``plate_qc``); null for fewer than 2 of either
    or equal centres."""
    if robust:
        spread, centre_p, centre_n = MAD_SCALE * (_mad(pos) + _mad(ref)), pos.median(), ref.median()
    else:
        spread, centre_p, centre_n = pos.std() + ref.std(), pos.mean(), ref.mean()
    defined = (pos.len() >= 2) & (ref.len() >= 2) & (centre_p != centre_n)
    return pl.when(defined).then(1 - 3 * spread / (centre_p - centre_n).abs())


def positive_z_primes(wells: pl.DataFrame) -> pl.DataFrame:
    """Robust Z′ of each positive control on each plate against that plate's reference wells (nuclei per field):
    columns ``plate``, ``control_name``, ``z_prime_robust``. ``plate_qc`` pools all positive controls of a plate;
    this tells a weak control (one that kills fewer cells) from a weak plate."""
    count = pl.col("nuclei_per_field")
    pos = wells.filter((pl.col("role") == "positive") & count.is_not_null()).select(
        "plate", "control_name", value=count, positive=pl.lit(True))
    ref = wells.filter(pl.col("is_reference") & count.is_not_null()).select("plate", value=count)
    ref = pos.select("plate", "control_name").unique().join(ref, on="plate").with_columns(positive=pl.lit(False))
    value, positive = pl.col("value"), pl.col("positive")
    return pl.concat([pos, ref], how="diagonal").group_by("plate", "control_name").agg(
        z_prime_robust=_z_prime(value.filter(positive), value.filter(~positive), robust=True),
    ).sort("plate", "control_name")


def plate_qc(wells: pl.DataFrame, z_prime_min: float = Z_PRIME_MIN) -> pl.DataFrame:
    """Per-plate quality: fields, reference level and spread, Z′-factor of the count, transfection toxicity.

    Parameters
    ----------
    wells
        From :func:`normalize_plates`.
    z_prime_min
        Plates whose robust Z′ is under this are flagged in ``low_z_prime``.

    Returns
    -------
    polars.DataFrame
        One row per plate, sorted by plate:

        - ``wells``, ``fields_analysed``, ``fields_failed``, ``fields_excluded``, ``reference_wells``,
          ``positive_wells``;
        - ``reference_nuclei_per_field`` and ``reference_area_mean``: medians over the reference wells (the
          denominators of the fold changes);
        - ``reference_cv``, ``positive_cv``: standard deviation (ddof=1) / mean of the nuclei per field of the
          reference and of the positive (PLK1/KIF11) wells; null for fewer than 2 wells or a mean of 0;
        - ``positive_count_fc``: median count FC of the positive wells; ``dynamic_range``: its inverse, the
          reference median over the positive median of nuclei per field (null when the latter is 0);
        - ``mock_count_fc``, ``untransfected_count_fc``: median count FC of the plate's mock and untransfected
          wells (:func:`~nucleiscreen.engine.layout.negative_kind`), the transfection-toxicity check beside the
          non-targeting reference (about 1 when the transfection does not kill cells); null without such wells;
        - the Z′-factors of nuclei per field between the plate's positive wells, all positive controls pooled (``p``),
          and its reference wells (``n``; per control: :func:`positive_z_primes`)::

            z_prime        = 1 - 3 (sd_p + sd_n) / |mean_p - mean_n|           (Zhang 1999; sd with ddof=1)
            z_prime_robust = 1 - 3 * 1.4826 (MAD_p + MAD_n) / |median_p - median_n|

          null where undefined: fewer than 2 analysed wells in either group, or equal centres. 1 > Z′ >= 0.5
          is an excellent assay, 0–0.5 marginal, < 0 unusable;
        - ``low_z_prime``: ``z_prime_robust < z_prime_min``; null where the robust Z′ is undefined;
        - ``no_reference``: the plate has no usable reference wells (none, none analysed, or a median of 0 nuclei),
          so its wells have no fold changes.
    """
    count = pl.col("nuclei_per_field")
    ref = count.filter(pl.col("is_reference") & count.is_not_null())
    pos = count.filter((pl.col("role") == "positive") & count.is_not_null())
    kind = negative_kind(pl.coalesce("control_name", "gene_symbol"))

    def cv(x: pl.Expr) -> pl.Expr:
        return pl.when((x.len() >= 2) & (x.mean() > 0)).then(x.std() / x.mean())

    def negative_fc(name: str) -> pl.Expr:
        return pl.col("count_fc").filter((pl.col("role") == "negative") & (kind == name)).median()

    qc = wells.group_by("plate").agg(
        wells=pl.len().cast(pl.Int64),
        fields_analysed=pl.col("fields_analysed").sum(),
        fields_failed=pl.col("fields_failed").sum(),
        fields_excluded=pl.col("fields_excluded").sum(),
        reference_wells=pl.col("is_reference").sum().cast(pl.Int64),
        positive_wells=(pl.col("role") == "positive").sum().cast(pl.Int64),
        reference_nuclei_per_field=ref.median(),
        reference_area_mean=pl.col("nuclei_area_mean").filter("is_reference").median(),
        reference_cv=cv(ref),
        positive_cv=cv(pos),
        positive_count_fc=pl.col("count_fc").filter(pl.col("role") == "positive").median(),
        dynamic_range=_scaled(ref.median(), pos.median()),
        mock_count_fc=negative_fc("mock"),
        untransfected_count_fc=negative_fc("untransfected"),
        z_prime=_z_prime(pos, ref, robust=False),
        z_prime_robust=_z_prime(pos, ref, robust=True),
    )
    return qc.with_columns(
        low_z_prime=pl.col("z_prime_robust") < z_prime_min,
        no_reference=pl.col("reference_nuclei_per_field").fill_null(0) <= 0,
    ).sort("plate")
