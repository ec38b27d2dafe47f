"""Hit rules as data: conjunctions of threshold conditions on columns that the well table and the gene table share
(``count_fc``, ``area_fc``, ``count_robust_z``, ...), so the same rule counts a gene's passing wells
(:func:`~nucleiscreen.engine.screen.genes.aggregate_genes`) and calls the gene a hit
(:func:`~nucleiscreen.engine.screen.hits.call_hits`).

The defaults are the paper's (Kazemi Rashed et al., Table I); a gene is a hit when its wells' medians have

- ``count_fc < 0.5 and area_fc > 1.7``: reduced count, enlarged nuclei (FBXO5, CCNA2), or
- ``count_fc < 0.1``: strong loss (UBB, POLR2A).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

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
