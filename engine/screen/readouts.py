"""Readouts: the measures of a well that are normalized, summarized per gene and usable in hit rules, as data.

The nuclei count and area are the paper's and keep their own definitions (:mod:`~nucleiscreen.engine.screen.wells`
``nuclei_per_field``, ``nuclei_area_mean``; ``count_fc``, ``area_fc``). Any other feature of a run is a
``Readout``: a name and an aggregation of a column of the run's tables over a well,

``nuclei_mean(COLUMN)``
    the mean of a per-nucleus feature over the well's nuclei (not touching the frame border, at least the
    micronucleus cut-off; the nuclei ``Mean_Nuclei_AreaShape_Area`` counts), object-weighted: exact from the
    image table's ``Mean_Nuclei_<COLUMN>`` when the run wrote it (``sum(mean_f * n_f) / sum(n_f)`` over fields),
    else from the object table (``segment --objects``);
``nuclei_median(COLUMN)``
    the median of a per-nucleus feature over those nuclei (the object table);
``field_mean(COLUMN)``
    the mean of a per-frame feature (an image-table column) over the well's analysed fields,

and is one line of ``readouts=`` or one ``--readout NAME=EXPR``. Each readout ``r`` adds to the well table ``r``
(its well value) and, normalized to the plate's reference wells like the count, ``r_fc``, ``log2_r_fc``,
``r_robust_z``, ``r_ssmd``; the gene and control tables take the medians of ``r_fc``, ``r_robust_z`` and ``r_ssmd``
over their wells; a hit rule reads them (``--rule lmp='lyso_intensity_fc > 1.2'``).

Without readouts asked for, every marker channel of the run (a channel whose nuclei intensity the image table has,
besides the nuclei channel's) gets ``<channel>_intensity = nuclei_mean(Intensity_MeanIntensity_<Channel>)``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from nucleiscreen.errors import UserError

AGGREGATIONS = ("nuclei_mean", "nuclei_median", "field_mean")
_EXPR = re.compile(r"\s*([a-z_]+)\(\s*([A-Za-z][A-Za-z0-9_]*)\s*\)\s*")
_NUCLEI_MEAN = re.compile(r"^Mean_Nuclei_Intensity_MeanIntensity_([A-Za-z][A-Za-z0-9]*)$")


@dataclass(frozen=True)
class Readout:
    """A measure of a well (module docstring): ``name`` (the column prefix), ``aggregation`` of ``column``."""

    name: str
    aggregation: str
    column: str

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise UserError(f"readout name {self.name!r}: use lower-case letters, digits and _ (it starts column "
                            "names such as <name>_fc)")
        if self.name in ("count", "area", "nuclei", "micronuclei"):
            raise UserError(f"readout name {self.name!r} is taken by the built-in nuclei measures")
        if self.aggregation not in AGGREGATIONS:
            raise UserError(f"readout {self.name}: unknown aggregation {self.aggregation!r}; use one of "
                            f"{', '.join(AGGREGATIONS)}, e.g. nuclei_mean(Intensity_MeanIntensity_Lyso)")

    @classmethod
    def parse(cls, text: str) -> Readout:
        """``NAME=AGGREGATION(COLUMN)``, e.g. ``lyso_intensity=nuclei_mean(Intensity_MeanIntensity_Lyso)``."""
        name, sep, expr = text.partition("=")
        m = _EXPR.fullmatch(expr)
        if not sep or m is None:
            raise UserError(f"--readout takes NAME=AGGREGATION(COLUMN), e.g. "
                            f"lyso_intensity=nuclei_mean(Intensity_MeanIntensity_Lyso), not {text!r}")
        return cls(name.strip(), m.group(1), m.group(2))

    @property
    def object_level(self) -> bool:
        """Whether its column is a per-nucleus feature."""
        return self.aggregation != "field_mean"

    def columns(self) -> tuple[str, ...]:
        """What it adds to the well table: its value, then its normalized forms."""
        n = self.name
        return n, f"{n}_fc", f"log2_{n}_fc", f"{n}_robust_z", f"{n}_ssmd"

    def gene_columns(self) -> tuple[str, ...]:
        """What a gene's (and a control's) row takes of it: medians over the wells."""
        n = self.name
        return f"{n}_fc", f"{n}_robust_z", f"{n}_ssmd"

    def __str__(self) -> str:
        return f"{self.name} = {self.aggregation}({self.column})"


def default_readouts(image_columns: Collection[str], nuclei: str) -> tuple[Readout, ...]:
    """Every marker channel's nuclei intensity (module docstring), from the image table's columns."""
    channels = [m.group(1) for c in image_columns if (m := _NUCLEI_MEAN.match(c)) and m.group(1) != nuclei]
    return tuple(Readout(f"{ch.lower()}_intensity", "nuclei_mean", f"Intensity_MeanIntensity_{ch}")
                 for ch in channels)


def check_readouts(readouts: Collection[Readout], image_columns: Collection[str],
                   object_columns: Collection[str] | None) -> None:
    """One line for a readout the run's tables cannot give, or two with one name."""
    names = [r.name for r in readouts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"readout {twice[0]} is given twice")
    for r in readouts:
        if r.aggregation == "field_mean" and r.column not in image_columns:
            raise UserError(f"readout {r.name}: the image table has no column {r.column}")
        if r.object_level:
            summary = r.aggregation == "nuclei_mean" and f"Mean_Nuclei_{r.column}" in image_columns
            if not summary and (object_columns is None or r.column not in object_columns):
                where = "the object table" if object_columns is not None else \
                    "an object table (the run was segmented without --objects)"
                raise UserError(f"readout {r.name}: {r.column} is not in {where}")
