"""Hit calling on genes, the control summary.

A gene is a hit when its row (:func:`~nucleiscreen.engine.screen.genes.aggregate_genes`: the medians of its wells)
passes a hit rule (:mod:`nucleiscreen.engine.screen.rules`; by default the paper's). Hits come from sample wells
only; controls (PLK1, KIF11, OTP, mock, ...) are reported by :func:`control_summary` with their fold changes and
never appear among the hits. A control's row summarizes its wells the same way as a gene's, with
:func:`~nucleiscreen.engine.screen.genes.well_summary`.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from nucleiscreen.engine.screen.genes import well_summary
from nucleiscreen.engine.screen.qc import positive_z_primes
from nucleiscreen.engine.screen.readouts import Readout
from nucleiscreen.engine.screen.rules import DEFAULT_RULES, HitRule, check_rules


def call_hits(genes: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES) -> pl.DataFrame:
    """The genes that pass at least one rule.

    Parameters
    ----------
    genes
        From :func:`~nucleiscreen.engine.screen.genes.aggregate_genes` (sample wells only).
    rules
        The hit rules, applied to each gene's row (its medians).

    Returns
    -------
    polars.DataFrame
        The passing rows of ``genes`` with ``hit_rules`` (the names of the rules passed, in rule order, joined
        by ``", "``) after ``gene_symbol``; sorted by ``count_fc`` ascending, then gene.

    Raises
    ------
    UserError
        A rule reads a column that ``genes`` does not have.
    """
    check_rules(rules, genes, "gene table")
    passed = pl.concat_list(pl.when(rule.expr()).then(pl.lit(rule.name)) for rule in rules).list.drop_nulls()
    hits = genes.with_columns(hit_rules=passed.list.join(", ")).filter(pl.col("hit_rules") != "")
    first = ["gene_symbol", "hit_rules"]
    return hits.select(*first, pl.exclude(first)).sort("count_fc", "gene_symbol", nulls_last=True)


ROLE_ORDER = {"negative": 0, "positive": 1, "other": 2, "empty": 3}


def control_summary(wells: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES,
                    readouts: Sequence[Readout] = ()) -> pl.DataFrame:
    """Every control of the screen with its fold changes, across plates.

    Parameters
    ----------
    wells
        From :func:`~nucleiscreen.engine.screen.plates.normalize_plates`.
    rules
        Each adds ``wells_pass_<rule.name>``: positive controls should pass the count rules.
    readouts
        Each adds the median of its fold change over the control's wells (``<name>_fc``).

    Returns
    -------
    polars.DataFrame
        One row per (role, control_name) of the non-sample wells: ``role``, ``control_name``, ``reference``
        (these wells are the normalization reference), ``wells``, ``plates``, ``wells_analysed``,
        ``nuclei_per_field``, ``count_fc``, ``area_fc``, ``count_ssmd`` (medians over the wells that have
        one), ``count_fc_min``, ``count_fc_max``, ``z_prime_robust`` (positive controls: the median over plates of
        the control's robust Z′ against the plate's reference, :func:`~nucleiscreen.engine.screen.qc.positive_z_primes`;
        null for other roles), then the rules' pass counts. Sorted negative, positive,
        other, empty; within a role the reference first, then by name. The mock and untransfected rows next
        to the non-targeting reference show transfection toxicity.
    """
    check_rules(rules, wells, "well table")
    controls = wells.filter(pl.col("role").is_not_null() & (pl.col("role") != "sample"))
    summary = controls.group_by("role", "control_name").agg(
        reference=pl.col("is_reference").any(),
        **well_summary(("nuclei_per_field", "count_fc", "area_fc", "count_ssmd",
                        *(f"{r.name}_fc" for r in readouts)), rules),
        count_fc_min=pl.col("count_fc").min(),
        count_fc_max=pl.col("count_fc").max(),
    )
    z = positive_z_primes(wells).group_by("control_name").agg(pl.col("z_prime_robust").median())
    summary = summary.join(z.with_columns(role=pl.lit("positive")), on=["role", "control_name"], how="left",
                           nulls_equal=True)
    summary = summary.select(pl.exclude("^wells_pass_.*$"), pl.col("^wells_pass_.*$"))  # pass counts last
    order = pl.col("role").replace_strict(ROLE_ORDER, default=len(ROLE_ORDER), return_dtype=pl.Int64)
    return summary.sort(order, "reference", "control_name", descending=[False, True, False], nulls_last=True)
