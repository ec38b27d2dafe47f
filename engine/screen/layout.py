"""Plate layouts: which gene (or control) sits in which well of which plate.

A layout file is CSV, TSV or Parquet with one row per well::

    plate,well,gene_symbol,role,control_name,sirna_id,entrez_id
    *,B02,OTP,negative,OTP,,
    MFGTMPcx7_170702000001,C05,FBXO5,sample,,s123,25793

- ``plate`` equals ``Metadata_Plate`` of the image table. ``*`` is a wildcard: the row applies to every plate
  of the run, unless that plate has its own row for the well (explicit rows override the wildcard, like
  cellHTS2's plate configuration).
- ``well`` is ``A01``–``P24`` of a 384-well plate; ``A1`` is accepted and written ``A01``.
- ``role`` is ``sample``, ``negative``, ``positive``, ``other`` or ``empty`` (``neg``/``pos``/``blank`` and a
  few other spellings are accepted). A missing ``role`` column, or a blank cell, is inferred from the control
  name (or the gene symbol when there is no control name), see :func:`infer_role`.
- Column names are matched case-, space- and underscore-insensitively, with common spellings (``Plate_ID``,
  ``Gene Symbol``, ``GeneSymbol``, ``Gene``, ``Type``, ...), see ``COLUMN_SPELLINGS``.

Row numbers in error messages are 1-based data rows (the header is not a row); for text files the line is
given too. Blank lines and rows whose every cell is empty are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from nucleiscreen.errors import UserError

ROLES = ("sample", "negative", "positive", "other", "empty")
WILDCARD = "*"
ROWS = "ABCDEFGHIJKLMNOP"  # a 384-well plate: 16 rows x 24 columns
N_COLUMNS = 24

LAYOUT_COLUMNS = (
    "plate", "well", "row", "column", "gene_symbol", "role", "control_name", "sirna_id", "entrez_id",
)
"""The columns of :func:`read_layout`'s table, in order."""

COLUMN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "plate": ("plate", "plateid", "platename", "platebarcode", "barcode", "assayplate", "metadataplate"),
    "well": ("well", "wellid", "wellname", "wellposition", "metadatawell"),
    "gene_symbol": ("genesymbol", "gene", "symbol", "genename", "targetgene", "target"),
    "role": ("role", "type", "welltype", "wellrole", "controltype", "content"),
    "control_name": ("controlname", "control"),
    "sirna_id": ("sirnaid", "sirna", "oligoid", "duplexid", "reagentid"),
    "entrez_id": ("entrezid", "entrez", "entrezgeneid", "geneid", "locusid"),
}
"""Accepted header spellings per column, written as :func:`_header_key` leaves them (lowercase, letters and
digits only)."""

REQUIRED = ("plate", "well", "gene_symbol")

ROLE_SPELLINGS: dict[str, str] = {
    "sample": "sample", "samples": "sample", "library": "sample",
    "negative": "negative", "neg": "negative", "negativecontrol": "negative", "nc": "negative",
    "positive": "positive", "pos": "positive", "positivecontrol": "positive", "pc": "positive",
    "other": "other",
    "empty": "empty", "blank": "empty",
}

# Control names, matched on the name upper-cased with spaces, '-', '_' and '.' removed.
NONTARGETING_PATTERN = r"^(OTP.*|.*NONTARGETING.*|NT|NTC)$"
MOCK_PATTERN = r"^(MOCK.*)$"
UNTRANSFECTED_PATTERN = r"^(UNTRANSFECTED.*|UNTREATED.*)$"
NEGATIVE_PATTERN = "|".join((NONTARGETING_PATTERN, MOCK_PATTERN, UNTRANSFECTED_PATTERN))
POSITIVE_PATTERN = r"^(PLK1|KIF11)$"
OTHER_PATTERN = r"^(LIPA)$"
EMPTY_PATTERN = r"^(|EMPTY|BLANK|NONE)$"


def name_key(name: pl.Expr) -> pl.Expr:
    """Control or gene name as it is matched: upper case, without spaces, ``-``, ``_`` and ``.``."""
    return name.str.to_uppercase().str.replace_all(r"[\s_.\-]", "")


def is_nontargeting(name: pl.Expr) -> pl.Expr:
    """True for a non-targeting siRNA name (``OTP``, ``OTP-NT``, ``non-targeting``, ``NT``, ``NTC``).

    These are the screen's reference wells; mock and untransfected wells are negative-like but not references.
    """
    return name_key(name).str.contains(NONTARGETING_PATTERN).fill_null(False)


def negative_kind(name: pl.Expr) -> pl.Expr:
    """Which kind of negative control a name is: ``"nontargeting"``, ``"mock"`` (transfection reagent
    without siRNA), ``"untransfected"`` (cells alone; also ``untreated``), or null for any other name.

    Comparing the three on a plate separates the toxicity of the siRNA transfection (non-targeting below mock)
    from that of the reagent (mock below untransfected).
    """
    key = name_key(name)
    return (
        pl.when(key.str.contains(NONTARGETING_PATTERN)).then(pl.lit("nontargeting"))
        .when(key.str.contains(MOCK_PATTERN)).then(pl.lit("mock"))
        .when(key.str.contains(UNTRANSFECTED_PATTERN)).then(pl.lit("untransfected"))
    )


def infer_role(name: pl.Expr) -> pl.Expr:
    """The role a control or gene name implies.

    ``OTP``/non-targeting/``NT``/``mock``/``untransfected``/``untreated`` -> ``negative``; ``PLK1``, ``KIF11`` ->
    ``positive``; ``LIPA`` -> ``other`` (the lysosomal-damage control); null, blank, ``empty`` -> ``empty``;
    anything else -> ``sample``.
    """
    key = name_key(name).fill_null("")
    return (
        pl.when(key.str.contains(EMPTY_PATTERN)).then(pl.lit("empty"))
        .when(key.str.contains(NEGATIVE_PATTERN)).then(pl.lit("negative"))
        .when(key.str.contains(POSITIVE_PATTERN)).then(pl.lit("positive"))
        .when(key.str.contains(OTHER_PATTERN)).then(pl.lit("other"))
        .otherwise(pl.lit("sample"))
    )


def well_parts(well: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``(row, column)`` of a well name such as ``B07`` or ``b7``: upper-case letter, integer column.

    Both are null when the name does not look like a letter and a number; range checks are the caller's.
    """
    parts = well.str.strip_chars().str.extract_groups(r"^([A-Za-z])0*(\d{1,2})$")
    row = parts.struct.field("1").str.to_uppercase()
    column = parts.struct.field("2").cast(pl.Int32)
    return row, column


def read_layout(path: str | Path) -> pl.DataFrame:
    """Read and validate a layout file.

    Parameters
    ----------
    path
        CSV (``.csv``), TSV (``.tsv``, ``.tab``; other text files are sniffed for tabs) or Parquet
        (``.parquet``, ``.pq``).

    Returns
    -------
    polars.DataFrame
        Columns ``LAYOUT_COLUMNS``: ``plate`` (str, ``*`` for the wildcard), ``well`` (``A01``–``P24``),
        ``row`` (``A``–``P``), ``column`` (1–24), ``gene_symbol``, ``role`` (one of ``ROLES``),
        ``control_name`` (the given control name, else the gene symbol for every non-sample well; null for
        samples), ``sirna_id``, ``entrez_id`` (strings, null when absent). Sorted by plate, row, column.

    Raises
    ------
    UserError
        The file is missing or unreadable; a required column (plate, well, gene_symbol) is missing (the
        message lists the columns found); two columns spell the same field; a row has no plate or well, a well
        outside a 384-well plate, an unknown role, or a sample without a gene symbol; two rows give the same
        plate and well. Every message names the file and the 1-based data row.
    """
    path = Path(path)
    raw = _read_table(path)
    columns = _match_columns(raw.columns, path)
    text = path.suffix.lower() not in (".parquet", ".pq")

    def where(row: int) -> str:
        return f"{path}, row {row}" + (f" (line {row + 1})" if text else "")

    df = raw.select(
        pl.int_range(1, pl.len() + 1).alias("_row"),
        *[
            (pl.col(columns[name]).cast(pl.String).str.strip_chars() if name in columns
             else pl.lit(None, pl.String)).alias(name)
            for name in COLUMN_SPELLINGS
        ],
    ).with_columns(pl.col(name).replace("", None) for name in COLUMN_SPELLINGS)
    # blank lines and rows of empty cells (spreadsheet exports end with them) are not wells
    df = df.filter(~pl.all_horizontal(pl.col(name).is_null() for name in COLUMN_SPELLINGS))
    row, column = well_parts(pl.col("well"))
    df = df.with_columns(row.alias("row"), column.alias("column"))

    def fail_first(bad: pl.Expr, message) -> None:
        hit = df.filter(bad)
        if hit.height:
            first = hit.row(0, named=True)
            raise UserError(f"{where(first['_row'])}: {message(first)}")

    fail_first(pl.col("plate").is_null(), lambda r: "no plate: give the plate name (or * for every plate)")
    fail_first(pl.col("well").is_null(), lambda r: "no well: give a well A01-P24")
    in_plate = pl.col("row").is_in(list(ROWS)) & pl.col("column").is_between(1, N_COLUMNS)
    fail_first(
        ~in_plate.fill_null(False),
        lambda r: f"well {r['well']!r} is outside a 384-well plate (A01-P24): fix the well or remove the row",
    )

    given_role = pl.col("role").str.to_lowercase().str.replace_all(r"[\s_.\-]", "")
    df = df.with_columns(_role=given_role.replace_strict(ROLE_SPELLINGS, default=None))
    fail_first(
        pl.col("role").is_not_null() & pl.col("_role").is_null(),
        lambda r: f"unknown role {r['role']!r}: use one of {', '.join(ROLES)}",
    )
    named = pl.coalesce("control_name", "gene_symbol")
    df = df.with_columns(
        well=pl.col("row") + pl.col("column").cast(pl.String).str.zfill(2),
        role=pl.coalesce("_role", infer_role(named)),
    )
    fail_first(
        (pl.col("role") == "sample") & pl.col("gene_symbol").is_null(),
        lambda r: "a sample well without a gene symbol: give the gene or set the role (empty, negative, ...)",
    )

    df = df.with_columns(_first=pl.col("_row").min().over("plate", "well"))
    fail_first(
        pl.col("_row") != pl.col("_first"),
        lambda r: f"plate {r['plate']} well {r['well']} is given twice (first in row {r['_first']}): "
        "keep one row per plate and well",
    )

    return df.with_columns(
        control_name=pl.when(pl.col("role") != "sample").then(named),
    ).select(LAYOUT_COLUMNS).sort("plate", "row", "column")


def expand_layout(layout: pl.DataFrame, plates: list[str] | pl.Series, *, source: str | Path | None = None
                  ) -> pl.DataFrame:
    """The layout of each plate of a run, wildcard rows resolved.

    For every plate ``p`` in ``plates``: the rows with ``plate == p``, plus the wildcard (``*``) rows whose
    well has no row of its own on ``p``. Rows of plates not in ``plates`` are dropped.

    Parameters
    ----------
    layout
        A table from :func:`read_layout` (an already expanded layout is returned filtered to ``plates``).
    plates
        The plates of the run (``Metadata_Plate`` values).
    source
        The layout file, named in error messages.

    Returns
    -------
    polars.DataFrame
        ``LAYOUT_COLUMNS`` with concrete plate names, sorted by plate, row, column.

    Raises
    ------
    UserError
        Some plates of the run have no row of their own in the layout (wildcard rows alone do not place the
        samples); the message names them.
    """
    run_plates = pl.DataFrame({"plate": pl.Series(plates, dtype=pl.String)}).unique()
    explicit = layout.filter(pl.col("plate") != WILDCARD)
    missing = run_plates.join(explicit.select("plate").unique(), on="plate", how="anti")["plate"].sort()
    if missing.len():
        more = f" and {missing.len() - 5} more" if missing.len() > 5 else ""
        shown = ", ".join(missing.head(5).to_list()) + more
        known = explicit["plate"].unique().sort().head(3).to_list()
        raise UserError(
            f"{source or 'the layout'}: no rows for {missing.len()} plate(s) of the run: {shown} "
            f"(the layout names plates like {', '.join(known) or 'none'}): add their wells to the layout"
        )
    explicit = explicit.join(run_plates, on="plate", how="semi")
    wildcard = (
        layout.filter(pl.col("plate") == WILDCARD).drop("plate")
        .join(run_plates, how="cross")
        .join(explicit, on=["plate", "well"], how="anti")
    )
    return pl.concat([explicit, wildcard.select(LAYOUT_COLUMNS)]).sort("plate", "row", "column")


def _read_table(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise UserError(f"layout file {path} does not exist: give a CSV, TSV or Parquet file (--layout)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        with path.open("rb") as f:
            head = f.readline().decode("utf-8-sig", errors="replace")
        separator = "\t" if suffix in (".tsv", ".tab") or ("\t" in head and "," not in head) else ","
        df = pl.read_csv(path, separator=separator, infer_schema=False, encoding="utf8-lossy")
    except (OSError, pl.exceptions.PolarsError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read layout file {path}: {first}") from e
    if df.width == 0:
        raise UserError(f"layout file {path} is empty: it needs a header with plate, well, gene_symbol, role")
    return df.rename({c: c.lstrip("\ufeff").strip() for c in df.columns})


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _match_columns(found: list[str], path: Path) -> dict[str, str]:
    """Map each layout field to the file's column that spells it."""
    matched: dict[str, str] = {}
    for field, spellings in COLUMN_SPELLINGS.items():
        hits = [c for c in found if _header_key(c) in spellings]
        if len(hits) > 1:
            names = ", ".join(map(repr, hits))
            raise UserError(f"{path}: columns {names} all name {field}: keep one of them")
        if hits:
            matched[field] = hits[0]
    missing = [f for f in REQUIRED if f not in matched]
    if missing:
        raise UserError(
            f"{path}: no column for {', '.join(missing)} (found: {', '.join(found)}); "
            "name the columns plate, well, gene_symbol, role"
        )
    return matched
