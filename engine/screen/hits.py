"""Hit rules as data, the summary of a group of wells they are applied to, hit calling on genes, the control
summary, and a plain text table for the terminal.

A hit rule is a conjunction of threshold conditions on columns that the well table and the gene table share
(``count_fc``, ``area_fc``, ``count_robust_z``, ...), so the same rule counts passing wells and calls genes.
The defaults are the paper's (Kazemi Rashed et al., Table I); a gene is a hit when its wells' medians have

- ``count_fc < 0.5 and area_fc > 1.7``: reduced count, enlarged nuclei (FBXO5, CCNA2), or
- ``count_fc < 0.1``: strong loss (UBB, POLR2A).

Hits come from sample wells only; controls (PLK1, KIF11, OTP, mock, ...) are reported by
:func:`control_summary` with their fold changes and never appear among the hits. A gene's row
(:func:`~nucleiscreen.engine.screen.genes.aggregate_genes`) and a control's row summarize their wells the same way,
with :func:`well_summary`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from nucleiscreen.engine.screen.qc import positive_z_primes
from nucleiscreen.errors import UserError

OPERATORS = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Condition:
    """``column op threshold``, e.g. ``Condition("count_fc", "<", 0.5)``. A null value never passes."""

    column: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise UserError(f"hit rule condition on {self.column}: unknown operator {self.op!r}, use one of "
                            f"{' '.join(OPERATORS)}")

    def expr(self) -> pl.Expr:
        """The condition as a boolean polars expression (null values give False)."""
        x = pl.col(self.column)
        passed = {"<": x < self.threshold, "<=": x <= self.threshold,
                  ">": x > self.threshold, ">=": x >= self.threshold}[self.op]
        return passed.fill_null(False)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class HitRule:
    """A named conjunction of conditions.

    Attributes
    ----------
    name
        A short identifier (letters, digits, ``_``), used in column names such as ``wells_pass_<name>``.
    description
        What the rule means, for people ("reduced count, enlarged nuclei").
    conditions
        All must hold.
    """

    name: str
    description: str
    conditions: tuple[Condition, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise UserError(f"hit rule name {self.name!r}: use letters, digits and _ only")
        if not self.conditions:
            raise UserError(f"hit rule {self.name} has no condition")

    def expr(self) -> pl.Expr:
        """True where every condition holds (False where a value is null)."""
        return pl.all_horizontal(c.expr() for c in self.conditions)

    def __str__(self) -> str:
        return " and ".join(str(c) for c in self.conditions)

    @classmethod
    def parse(cls, name: str, text: str, description: str = "") -> HitRule:
        """Make a rule from text such as ``"count_fc < 0.5 and area_fc > 1.7"``.

        Raises
        ------
        UserError
            A condition is not ``column op number``.
        """
        conditions = []
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", part)
            try:
                threshold = float(m.group(3)) if m else math.nan
            except ValueError:
                threshold = math.nan
            if not m or math.isnan(threshold):
                raise UserError(f"hit rule {name}: cannot read {part!r}; write conditions like "
                                "'count_fc < 0.5 and area_fc > 1.7'")
            conditions.append(Condition(m.group(1), m.group(2), threshold))
        return cls(name, description or text.strip(), tuple(conditions))


def check_rules(rules: Sequence[HitRule], table: pl.DataFrame, what: str) -> None:
    """Raise a ``UserError`` naming the first rule whose condition reads a column ``table`` does not have.

    ``what`` names the table in the message (``"gene table"``, ...).
    """
    for rule in rules:
        for c in rule.conditions:
            if c.column not in table.columns:
                numeric = [n for n, t in table.schema.items() if t.is_numeric()]
                raise UserError(f"hit rule {rule.name}: the {what} has no column {c.column!r}; "
                                f"use one of {', '.join(numeric)}")


DEFAULT_RULES: tuple[HitRule, ...] = (
    HitRule("reduced_count_enlarged_nuclei", "reduced count, enlarged nuclei",
            (Condition("count_fc", "<", 0.5), Condition("area_fc", ">", 1.7))),
    HitRule("strong_loss", "strong loss", (Condition("count_fc", "<", 0.1),)),
)
"""The paper's rules, applied to gene medians of the fold changes to the OTP wells."""


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


def control_summary(wells: pl.DataFrame, rules: Sequence[HitRule] = DEFAULT_RULES) -> pl.DataFrame:
    """Every control of the screen with its fold changes, across plates.

    Parameters
    ----------
    wells
        From :func:`~nucleiscreen.engine.screen.plates.normalize_plates`.
    rules
        Each adds ``wells_pass_<rule.name>``: positive controls should pass the count rules.

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
        **well_summary(("nuclei_per_field", "count_fc", "area_fc", "count_ssmd"), rules),
        count_fc_min=pl.col("count_fc").min(),
        count_fc_max=pl.col("count_fc").max(),
    )
    z = positive_z_primes(wells).group_by("control_name").agg(pl.col("z_prime_robust").median())
    summary = summary.join(z.with_columns(role=pl.lit("positive")), on=["role", "control_name"], how="left",
                           nulls_equal=True)
    summary = summary.select(pl.exclude("^wells_pass_.*$"), pl.col("^wells_pass_.*$"))  # pass counts last
    order = pl.col("role").replace_strict(ROLE_ORDER, default=len(ROLE_ORDER), return_dtype=pl.Int64)
    return summary.sort(order, "reference", "control_name", descending=[False, True, False], nulls_last=True)


def format_value(value: object) -> str:
    """One cell as text: null -> ``-``; floats with 3 significant digits below 100, 1 decimal above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def format_table(df: pl.DataFrame, max_rows: int | None = None) -> str:
    """A fixed-width text table (header, rule, rows): numbers right-aligned, text left-aligned.

    Parameters
    ----------
    df
        Any table; list or struct cells are shown with ``str``.
    max_rows
        Show at most this many rows, then a line ``... N more rows``.
    """
    shown = df if max_rows is None else df.head(max_rows)
    cells = [[format_value(v) for v in row] for row in shown.iter_rows()]
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    widths = [max([len(name), *(len(r[i]) for r in cells)]) for i, name in enumerate(df.columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    lines = [line(df.columns), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    if df.height > shown.height:
        lines.append(f"... {df.height - shown.height} more rows")
    if df.height == 0:
        lines.append("(none)")
    return "\n".join(lines)
