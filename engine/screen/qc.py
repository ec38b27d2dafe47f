"""Quality control of a screen: which frames to leave out of the wells (:class:`FrameQC`: focus, saturation), and
how good each plate is (:func:`plate_qc`: reference level and spread, Z′-factors, transfection toxicity;
:func:`positive_z_primes`: the Z′ of each positive control).

Everything here is a polars expression or group-by; there are no Python loops over rows. Z′ is a statistic of the
normalized wells (it needs each plate's reference wells), so this module follows
:mod:`~nucleiscreen.engine.screen.plates`, whose robust statistics it uses; the control summary of
:mod:`~nucleiscreen.engine.screen.hits` reports each positive control's Z′.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

import polars as pl

from nucleiscreen.engine.channels import NUCLEI
from nucleiscreen.engine.screen.layout import negative_kind
from nucleiscreen.engine.screen.plates import MAD_SCALE, mad, scaled
from nucleiscreen.kernels.quality import quality_columns

Z_PRIME_MIN = 0.5
"""Plates whose robust Z′ is under this are flagged (1 > Z′ >= 0.5: an excellent assay, Zhang 1999)."""


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

    focus_column: str = quality_columns(NUCLEI)[0]
    min_focus_ratio: float | None = 0.2
    focus_min_nuclei: float = 20.0
    min_focus: float | None = None
    saturation_column: str = quality_columns(NUCLEI)[1]
    max_saturated_percent: float | None = 1.0

    def for_channel(self, channel: str) -> FrameQC:
        """These rules on the measures of another nuclei channel (a run made with ``--channels``)."""
        focus, saturation = quality_columns(channel)
        return replace(self, focus_column=focus, saturation_column=saturation)

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


def _z_prime(pos: pl.Expr, ref: pl.Expr, robust: bool) -> pl.Expr:
    """Z′ between the values ``pos`` and ``ref`` of one group (see ``plate_qc``); null for fewer than 2 of either
    or equal centres."""
    if robust:
        spread, centre_p, centre_n = MAD_SCALE * (mad(pos) + mad(ref)), pos.median(), ref.median()
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
        From :func:`~nucleiscreen.engine.screen.plates.normalize_plates`.
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
          wells (:func:`~nucleiscreen.engine.screen.layout.negative_kind`), the transfection-toxicity check beside the
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
        dynamic_range=scaled(ref.median(), pos.median()),
        mock_count_fc=negative_fc("mock"),
        untransfected_count_fc=negative_fc("untransfected"),
        z_prime=_z_prime(pos, ref, robust=False),
        z_prime_robust=_z_prime(pos, ref, robust=True),
    )
    return qc.with_columns(
        low_z_prime=pl.col("z_prime_robust") < z_prime_min,
        no_reference=pl.col("reference_nuclei_per_field").fill_null(0) <= 0,
    ).sort("plate")
