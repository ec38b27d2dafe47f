"""The gene table: each gene's sample wells (its siRNAs, across plates) combined into one row of medians, the
row that :func:`~nucleiscreen.engine.screen.hits.call_hits` applies the hit rules to; and :func:`well_summary`, the
summary of a group of wells that a gene's row and a control's row are made of.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from nucleiscreen.engine.screen.plates import log2
from nucleiscreen.engine.screen.readouts import Readout
from nucleiscreen.engine.screen.rules import DEFAULT_RULES, HitRule, check_rules

GENE_MEDIANS = ("count_fc", "area_fc", "count_robust_z", "count_ssmd", "area_ssmd", "count_b_score",
                "nuclei_per_field")
"""Well columns that a gene summarizes by their median over its wells."""


def aggregate_genes(wells: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES,
                    readouts: Sequence[Readout] = ()) -> pl.DataFrame:
    """Combine each gene's sample wells (its siRNAs, across plates).

    Parameters
    ----------
    wells
        From :func:`~nucleiscreen.engine.screen.plates.normalize_plates`.
    rules
        Hit rules; each adds ``wells_pass_<rule.name>``, the number of the gene's wells that pass the rule on
        their own fold changes.
    readouts
        The well table's further measures: each adds the medians of its ``_fc``, ``_robust_z`` and ``_ssmd`` over
        the gene's wells, and ``log2_<name>_fc`` of that median, before the pass counts.

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
    more = [c for r in readouts for c in r.gene_columns()]
    genes = wells.filter(pl.col("role") == "sample").group_by("gene_symbol").agg(
        entrez_id=pl.col("entrez_id").drop_nulls().first(),
        sirnas=pl.col("sirna_id").drop_nulls().n_unique().cast(pl.Int64),
        **well_summary((*GENE_MEDIANS, *more), rules),
    )
    return genes.with_columns(
        log2_count_fc=log2(pl.col("count_fc")),
        log2_area_fc=log2(pl.col("area_fc")),
        **{f"log2_{r.name}_fc": log2(pl.col(f"{r.name}_fc")) for r in readouts},
    ).select(
        "gene_symbol", "entrez_id", "wells", "wells_analysed", "plates", "sirnas", "count_fc", "area_fc",
        "log2_count_fc", "log2_area_fc", "count_robust_z", "count_ssmd", "area_ssmd", "count_b_score",
        "nuclei_per_field",
        *(c for r in readouts for c in (f"{r.name}_fc", f"log2_{r.name}_fc", *r.gene_columns()[1:])),
        pl.col("^wells_pass_.*$"),
    ).sort("gene_symbol")


def well_summary(medians: Sequence[str], rules: Sequence[HitRule]) -> dict[str, pl.Expr]:
    """The aggregations that summarize a group of normalized wells (a gene's, a control's), to pass to ``agg``.

    Parameters
    ----------
    medians
        Columns of the well table to summarize by their median over the group's wells that have one.
    rules
        Each adds ``wells_pass_<rule.name>``, the number of the group's wells that pass the rule on their own
        values.

    Returns
    -------
    dict of str to polars.Expr
        Output name -> expression: ``wells``, ``plates`` (distinct), ``wells_analysed`` (wells with a count FC),
        then ``medians`` under their own names, then the rules' pass counts.
    """
    return {
        "wells": pl.len().cast(pl.Int64),
        "plates": pl.col("plate").n_unique().cast(pl.Int64),
        "wells_analysed": pl.col("count_fc").is_not_null().sum().cast(pl.Int64),
        **{name: pl.col(name).median() for name in medians},
        **{f"wells_pass_{rule.name}": rule.expr().sum().cast(pl.Int64) for rule in rules},
    }
