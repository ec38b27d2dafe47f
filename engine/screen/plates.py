"""Per-plate normalization: the layout joined to the well table, and every well scored against its plate's
reference wells (fold change, robust z, SSMD, B-score by median polish).

Everything here is a polars expression or group-by; there are no Python loops over rows. The robust statistics
the scores are made of (:func:`mad`, :func:`scaled`, :func:`log2`) are defined here once; plate QC and the gene
table use the same ones.

Normalized well table
---------------------
:func:`normalize_plates` adds to the well table of :func:`~nucleiscreen.engine.screen.wells.aggregate_wells`, from the
layout: gene_symbol, role, control_name, sirna_id, entrez_id (null for a well that the layout does not list),
and:

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
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from nucleiscreen.engine.screen.layout import expand_layout, is_nontargeting, name_key, negative_kind
from nucleiscreen.engine.screen.readouts import Readout
from nucleiscreen.errors import UserError

MAD_SCALE = 1.4826
"""Scales the median absolute deviation to the standard deviation of a normal distribution."""

POLISH_ITERATIONS = 10
POLISH_EPS = 0.01


def normalize_plates(wells: pl.DataFrame, layout: pl.DataFrame, reference: str | Sequence[str] = "negative",
                     *, source: str | Path | None = None, readouts: Sequence[Readout] = ()) -> pl.DataFrame:
    """Join the layout and normalize every well to its plate's reference wells.

    Parameters
    ----------
    wells
        From :func:`~nucleiscreen.engine.screen.wells.aggregate_wells`.
    layout
        From :func:`~nucleiscreen.engine.screen.layout.read_layout` (wildcards are resolved here for the plates of
        ``wells``).
    reference
        ``"negative"``: the negative wells named as non-targeting (OTP, non-targeting, NT) if the layout names
        any, else the negative wells that are neither mock nor untransfected (e.g. ``siNeg``), else every
        negative well. Or control names (one or a list, matched case-, space- and
        dash-insensitively against ``control_name``, else ``gene_symbol``), e.g. ``["OTP", "mock"]``.
    source
        The layout file, named in error messages.
    readouts
        The well table's further measures (:mod:`~nucleiscreen.engine.screen.readouts`): each ``r`` gets ``r_fc``
        (to the median of the plate's reference wells), ``log2_r_fc``, ``r_robust_z`` (against the plate's sample
        wells) and ``r_ssmd`` (of ``log2_r_fc`` against the reference wells), as the count.

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
        without one, among plates with one, get null fold changes and scores and are flagged by
        :func:`~nucleiscreen.engine.screen.qc.plate_qc`.
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
        _sample_mad=mad(sample),
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
        log2_count_fc=log2(pl.col("count_fc")),
        log2_area_fc=log2(pl.col("area_fc")),
        count_robust_z=scaled(count - pl.col("_sample_median"), MAD_SCALE * pl.col("_sample_mad")),
    ).with_columns(
        count_ssmd=_ssmd(pl.col("_l")),
        area_ssmd=_ssmd(pl.col("log2_area_fc")),
    )
    residuals = median_polish(df.filter(is_sample & pl.col("_l").is_not_null())
                              .select("plate", "row", "column", "well", value="_l"))
    b_scores = residuals.with_columns(
        count_b_score=scaled(pl.col("residual"), MAD_SCALE * mad(pl.col("residual")).over("plate")),
    ).select("plate", "well", "count_b_score")
    df = df.join(b_scores, on=["plate", "well"], how="left")
    df = df.drop("_l", *plates.drop("plate").columns)
    return _normalize_readouts(df, readouts).sort("plate", "row", "column")


def _normalize_readouts(df: pl.DataFrame, readouts: Sequence[Readout]) -> pl.DataFrame:
    """Each readout's fold change to its plate's reference median, its log, robust z and SSMD (``normalize_plates``)."""
    is_sample = pl.col("role") == "sample"
    for r in readouts:
        x = pl.col(r.name)
        reference = x.filter("is_reference").median().over("plate")
        sample = x.filter(is_sample)
        name, fc, log2_fc, robust_z, ssmd = r.columns()
        df = df.with_columns(
            pl.when(reference > 0).then(x / reference).alias(fc),
            scaled(x - sample.median().over("plate"), MAD_SCALE * mad(sample).over("plate")).alias(robust_z),
        ).with_columns(log2(pl.col(fc)).alias(log2_fc)).with_columns(_ssmd(pl.col(log2_fc)).alias(ssmd))
    return df


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


def mad(x: pl.Expr) -> pl.Expr:
    """Median absolute deviation from the median (unscaled; ``MAD_SCALE * mad`` estimates a standard deviation)."""
    return (x - x.median()).abs().median()


def scaled(x: pl.Expr, spread: pl.Expr) -> pl.Expr:
    """``x / spread``, null where the spread is 0 or null (no infinite scores)."""
    return pl.when(spread > 0).then(x / spread)


def _ssmd(l: pl.Expr) -> pl.Expr:  # noqa: E741 - the l of the formula
    """Robust SSMD of each well's ``l`` against the plate's reference wells."""
    ref = l.filter("is_reference")
    centre, spread = ref.median().over("plate"), mad(ref).over("plate")
    return scaled(l - centre, math.sqrt(2) * MAD_SCALE * spread)


def log2(x: pl.Expr) -> pl.Expr:
    """``log2(x)``, null where ``x`` is 0, negative or null (no ``-inf``)."""
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

