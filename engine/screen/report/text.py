"""Tables as plain text, for the terminal summary and the cells of the report: one value
(:func:`format_value`) and a fixed-width table (:func:`format_table`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl


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
