"""From frame rows to wells: the image table (one row per frame) aggregated to one row per plate and well.

Everything here is a polars expression or group-by; there are no Python loops over rows. Which frames to leave
out (focus, saturation) is decided by :class:`~nucleiscreen.engine.screen.qc.FrameQC`;
:mod:`nucleiscreen.engine.screen.plates` normalizes the well table to each plate's reference wells.

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
    Object-weighted mean of the nuclei's mean intensity in the nuclei channel (raw units): ``sum(mean_f * n_f) /
    sum(n_f)`` over fields ``f`` with ``n_f`` non-border nuclei of mean intensity ``mean_f``. Null when there is no
    non-border nucleus.
micronuclei_per_nucleus
    ``micronuclei / nuclei``; null when there is no nucleus.
<readout>
    Each readout's well value (:mod:`~nucleiscreen.engine.screen.readouts`), after the columns above.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from nucleiscreen.engine.channels import NUCLEI, path_columns
from nucleiscreen.engine.screen.layout import well_parts
from nucleiscreen.engine.screen.readouts import Readout
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA

IMAGE_REQUIRED = (
    "Metadata_Plate", "Metadata_Well", "Count_Nuclei", "Count_Nuclei_NonBorder",
    "Total_Nuclei_AreaShape_Area",
)
OBJECT_REQUIRED = ("Metadata_Plate", "Metadata_Well", "AreaShape_Area", "TouchesBorder")


def image_optional(channel: str) -> dict[str, pl.DataType]:
    """The image-table columns read when present (the nuclei ``channel``'s names)."""
    folder, file = path_columns(channel)
    return {"Count_Micronuclei": pl.Int64, "Median_Nuclei_AreaShape_Area": pl.Float64,
            f"Mean_Nuclei_Intensity_MeanIntensity_{channel}": pl.Float64, folder: pl.String, file: pl.String}

Frame = pl.DataFrame | pl.LazyFrame


def aggregate_wells(images: Frame, errors: Frame | None = None, *, exclude: pl.Expr | None = None,
                    objects: Frame | None = None, micronucleus_area: float = DEFAULT_MICRONUCLEUS_AREA,
                    channel: str = NUCLEI, readouts: Sequence[Readout] = ()) -> pl.DataFrame:
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
        ``fields_excluded``); null counts as false. :meth:`~nucleiscreen.engine.screen.qc.FrameQC.exclude` makes one
        from the focus and saturation columns.
    objects
        The object table (``segment --objects``: one row per object, at least ``OBJECT_REQUIRED``), or None.
        Gives the exact ``nuclei_area_median``; objects of excluded frames (matched on plate, well and
        ``Metadata_Site``) are left out.
    micronucleus_area
        The cut-off the run used (its manifest's ``micronucleus_area``): smaller objects of the object table
        are micronuclei, not nuclei.
    channel
        The run's nuclei channel (its columns' suffix).
    readouts
        Further measures, each a column after ``WELL_COLUMNS`` (:mod:`~nucleiscreen.engine.screen.readouts`;
        ``check_readouts`` has checked that the tables give them).

    Returns
    -------
    polars.DataFrame
        The well table described in the module docstring, sorted by plate, row, column. A well whose every
        frame failed is present, with ``fields_analysed = 0`` and null measures.
    """
    frames = images.lazy()
    schema = _require(frames, IMAGE_REQUIRED, "image", "`nucleiscreen segment`")
    own_intensity = f"Mean_Nuclei_Intensity_MeanIntensity_{channel}"
    frames = frames.with_columns(
        pl.lit(None, dtype).alias(name) for name, dtype in image_optional(channel).items() if name not in schema
    ).with_columns(
        pl.col("Total_Nuclei_AreaShape_Area", "Median_Nuclei_AreaShape_Area", own_intensity)
        .cast(pl.Float64).fill_nan(None),
        _excluded=pl.lit(False) if exclude is None else exclude.fill_null(False),
    )

    def kept(name: str) -> pl.Expr:  # a measure of the frames that are analysed, null for excluded frames
        return pl.when(~pl.col("_excluded")).then(pl.col(name))

    nonborder = kept("Count_Nuclei_NonBorder")
    intensity = kept(own_intensity)
    # readouts from the image table: an object-weighted mean of the fields' nuclei means, or a mean of the fields
    by_image = [r for r in readouts if r.aggregation == "field_mean" or
                (r.aggregation == "nuclei_mean" and f"Mean_Nuclei_{r.column}" in schema)]
    by_objects = [r for r in readouts if r not in by_image]
    readout_aggs = {}
    for r in by_image:
        if r.aggregation == "field_mean":
            readout_aggs[r.name] = kept(r.column).cast(pl.Float64).fill_nan(None).mean()
        else:
            mean = kept(f"Mean_Nuclei_{r.column}").cast(pl.Float64).fill_nan(None)
            readout_aggs[f"_{r.name}_sum"] = (mean * nonborder).sum()
            readout_aggs[f"_{r.name}_weight"] = pl.when(mean.is_not_null()).then(nonborder).sum()
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
        **readout_aggs,
    )

    wells = analysed
    if errors is not None:
        wells = wells.join(_failed_fields(errors, frames, channel), on=["plate", "well"], how="full", coalesce=True)
    else:
        wells = wells.with_columns(fields_failed=pl.lit(0, pl.Int64))
    if objects is not None:
        medians = _object_medians(objects, frames, micronucleus_area, by_objects)
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
        **{r.name: pl.when(pl.col(f"_{r.name}_weight") > 0).then(pl.col(f"_{r.name}_sum") / pl.col(f"_{r.name}_weight"))
           for r in by_image if r.aggregation == "nuclei_mean"},
    ).with_columns(pl.when(any_field).then(pl.col(r.name)) for r in readouts)
    return wells.select(*WELL_COLUMNS, *(r.name for r in readouts)).sort("plate", "row", "column").collect()


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


def _object_medians(objects: Frame, frames: pl.LazyFrame, micronucleus_area: float,
                    readouts: Sequence[Readout] = ()) -> pl.LazyFrame:
    """Exact median area of the non-border nuclei per plate and well, over the object table, less the objects
    of excluded frames; and the ``readouts`` that the object table gives (their mean or median over the same
    nuclei)."""
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
        **{r.name: (pl.col(r.column).cast(pl.Float64).fill_nan(None).mean() if r.aggregation == "nuclei_mean"
                    else pl.col(r.column).cast(pl.Float64).fill_nan(None).median()) for r in readouts},
    ).with_columns(pl.col("plate", "well").cast(pl.String))


def _failed_fields(errors: Frame, frames: pl.LazyFrame, channel: str) -> pl.LazyFrame:
    """Failed frames per plate and well: distinct files (of the nuclei ``channel``) of the error table that have no
    image row."""
    errors = errors.lazy()
    schema = errors.collect_schema()
    file = list(path_columns(channel))
    columns = {**dict.fromkeys(file, pl.String), "Metadata_Plate": pl.String, "Metadata_Well": pl.String}
    errors = errors.with_columns(
        pl.lit(None, dtype).alias(name) for name, dtype in columns.items() if name not in schema
    ).select(pl.col(name).cast(dtype) for name, dtype in columns.items())
    succeeded = frames.select(pl.col(file).cast(pl.String)).filter(pl.col(file[1]).is_not_null())
    return (
        errors.filter(pl.col("Metadata_Plate").is_not_null() & pl.col("Metadata_Well").is_not_null())
        .join(succeeded, on=file, how="anti", nulls_equal=True)
        .unique(subset=["Metadata_Plate", "Metadata_Well", *file])
        .group_by(plate="Metadata_Plate", well="Metadata_Well")
        .agg(fields_failed=pl.len().cast(pl.Int64))
    )

