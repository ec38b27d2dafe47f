"""Find the frames of a plate screen: list folders once, parse plate, well, site and channel from names.

A screen folder can hold hundreds of thousands of files on a shared file system, so each folder is
listed once with ``os.scandir`` (file or folder comes from the listing's d_type, no ``stat`` per file)
and every name goes through one compiled regular expression. Values are then converted column-wise
with polars; the few distinct wells and folders are parsed in Python once each.

Naming patterns are regular expressions with named groups:

``plate``
    Plate name. Missing (or not matched): the name of the folder holding the file, or of its parent
    when that folder is called ``Images`` (the Opera/Operetta Harmony export layout).
``well`` or ``row`` + ``column``
    Well as ``B07``/``B7``/``b07``, or row (letter, or number with 1 = A) and column number.
``site`` (or ``field``)
    Field of view within the well, as in the file name (CX7 fields are 0-based, ImageXpress sites
    and Opera fields 1-based). Missing: 0.
``channel``
    Channel number as in the file name (CX7 ``d0`` is 0, ImageXpress ``w1`` is 1). Missing: 0.

Group names are case-insensitive (CellProfiler's ``Plate``, ``Well``, ``Site`` and ``ChannelNumber``
work); other groups are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from nucleiscreen.engine.readers import IMAGE_SUFFIXES
from nucleiscreen.errors import UserError

FRAME_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Column", "Metadata_Site",
                 "Metadata_Channel", "PathName_DNA", "FileName_DNA"]
"""The columns of ``Discovery.frames``, in order (CellProfiler's names; the image table starts with them)."""

__all__ = ["FRAME_COLUMNS", "PATTERNS", "Discovery", "NamingPattern", "discover", "discover_images"]


@dataclass(frozen=True)
class NamingPattern:
    """How an instrument names its frames.

    Attributes
    ----------
    name : str
        Short name (``cx7``, ``imagexpress``, ``opera``, or ``custom`` for a user regex).
    regex : re.Pattern
        Matched against the file name (not the folder) with ``re.Pattern.search``; the built-ins
        are anchored at both ends.
    nuclei_channel : int or None
        The channel analysed when none is asked for; None means the lowest channel found.
    exclude : re.Pattern or None
        Names that match the regex but are not frames (ImageXpress ``_thumb`` thumbnails).
    """

    name: str
    regex: re.Pattern
    nuclei_channel: int | None = None
    exclude: re.Pattern | None = None


_IMAGE_EXT = r"\.(?i:c01|dib|tiff?|png)$"
PATTERNS: dict[str, NamingPattern] = {
    # CellInsight CX7 / Cellomics: MFGTMPcx7_170702000001_B14f07d0.C01 (field and channel 0-based).
    "cx7": NamingPattern(
        "cx7",
        re.compile(r"^(?P<plate>.+?)_(?P<well>[A-P]\d{2})f(?P<site>\d{2,3})[do](?P<channel>\d+)" + _IMAGE_EXT),
        nuclei_channel=0,
    ),
    # ImageXpress / MetaXpress: Plate_A01_s1_w1<UUID>.tif; single-site files have no _s.
    "imagexpress": NamingPattern(
        "imagexpress",
        re.compile(
            r"^(?:(?P<plate>.*?)_)?(?P<well>[A-P]\d{2})(?:_s(?P<site>\d+))?_w(?P<channel>\d)"
            r"(?:[0-9A-Fa-f-]{36})?\.(?i:tiff?)$"
        ),
        nuclei_channel=1,
        exclude=re.compile(r"(?i)_thumb"),
    ),
    # Opera Phenix / Operetta (Harmony): r01c01f01p01-ch1sk1fk1fl1.tiff, row 01 = A; no plate in the name.
    "opera": NamingPattern(
        "opera",
        re.compile(
            r"^r(?P<row>\d{2})c(?P<column>\d{2})f(?P<site>\d{2,})p(?P<plane>\d{2})"
            r"-ch(?P<channel>\d+)sk(?P<timepoint>\d+)fk\d+fl\d+\.(?i:tiff?)$"
        ),
        nuclei_channel=1,
    ),
}

_ALIASES = {"col": "column", "field": "site", "channelnumber": "channel"}
_FIELDS = ("plate", "well", "row", "column", "site", "channel")
_WELL = re.compile(r"([A-Za-z]{1,2})(\d{1,3})")


@dataclass(frozen=True)
class Discovery:
    """The frames found for one channel, and what else was seen.

    Attributes
    ----------
    frames : polars.DataFrame
        One row per frame of ``channel``, sorted by plate, well (row, then column) and site, with
        columns ``Metadata_Plate`` (str), ``Metadata_Well`` (str, ``B07``), ``Metadata_Row`` (str,
        ``B``), ``Metadata_Column`` (int), ``Metadata_Site`` (int), ``Metadata_Channel`` (int),
        ``PathName_DNA`` (str, absolute folder) and ``FileName_DNA`` (str, file name).
    pattern : str
        Name of the naming pattern used (``custom`` for a user regex).
    regex : str
        Its regular expression.
    channels : tuple of int
        Every channel seen, sorted.
    channel : int
        The channel in ``frames``.
    ignored : int
        Image files in the folders that did not match the pattern (thumbnails included).
    """

    frames: pl.DataFrame
    pattern: str
    regex: str
    channels: tuple[int, ...]
    channel: int
    ignored: int = 0

    def fields_per_well(self) -> pl.DataFrame:
        """Count of frames per well: columns ``Metadata_Plate``, ``Metadata_Well``, ``Fields``."""
        return self.frames.group_by("Metadata_Plate", "Metadata_Well", maintain_order=True).agg(
            pl.len().alias("Fields")
        )

    def missing_fields(self) -> pl.DataFrame:
        """Wells with fewer frames than the most common count (the largest one on a tie).

        A well with no frame at all is not listed: without a plate layout nothing says it should exist.

        Same columns as :meth:`fields_per_well`, plus ``Expected`` (that most common count).
        """
        fields = self.fields_per_well()
        expected = fields["Fields"].mode().max() if fields.height else 0
        return fields.filter(pl.col("Fields") < expected).with_columns(
            pl.lit(expected, dtype=pl.UInt32).alias("Expected")
        )

    def summary(self) -> str:
        """A few human-readable lines: plates, wells, fields per well, channels, missing fields."""
        frames = self.frames
        plates = frames["Metadata_Plate"].unique(maintain_order=True).to_list()
        fields = self.fields_per_well()
        missing = self.missing_fields()
        per_well = fields["Fields"].value_counts(sort=True)
        per_well_text = ", ".join(f"{n} ({_plural(w, 'well')})" for n, w in per_well.iter_rows())
        lines = [
            f"pattern: {self.pattern} ({frames.height} frames of channel {self.channel}"
            + (f"; {_plural(self.ignored, 'image file')} did not match)" if self.ignored else ")"),
            f"plates: {len(plates)} ({_some(plates)})",
            f"wells: {fields.height}",
            f"fields per well: {per_well_text}",
            f"channels seen: {', '.join(map(str, self.channels))}; using channel {self.channel}",
        ]
        if missing.is_empty():
            lines.append("missing fields: none")
        else:
            examples = [f"{p} {w} ({n} of {e})" for p, w, n, e in missing.iter_rows()]
            lines.append(f"missing fields: {_plural(missing.height, 'well')} with fewer: {_some(examples)}")
        return "\n".join(lines)


def discover(sources: Sequence[str | os.PathLike], pattern: str = "auto", channel: int | None = None) -> Discovery:
    """Find the frames of one channel in folders (searched recursively) and explicit files.

    Parameters
    ----------
    sources : sequence of str or os.PathLike
        Folders and/or image files. A file given explicitly must match the pattern. Files reached
        twice (overlapping folders, links) are counted once; hidden files and folders (``.name``)
        are skipped.
    pattern : str
        ``auto`` (the built-in pattern that matches the most image files; ties go to ``cx7``, then
        ``imagexpress``, then ``opera``), a built-in name (``cx7``, ``imagexpress``, ``opera``), or a
        regular expression with named groups (see the module docstring) searched in each file name;
        a custom regex only sees files with an image suffix (.tif, .tiff, .png, .C01, .DIB).
    channel : int, optional
        Channel to keep, numbered as in the file names. Default: the pattern's nuclei channel
        (cx7 0 = ``d0``, imagexpress 1 = ``w1``, opera 1 = ``ch1``; the lowest channel for a custom regex).

    Returns
    -------
    Discovery

    Raises
    ------
    UserError
        A source does not exist, the regex is invalid, no file matches, a given file does not
        match, the channel is not present, or the same plate/well/site/channel is found twice.
    """
    listing = _Listing.of(sources)
    images = listing.images()
    names = pl.Series("name", [listing.names[i] for i in images], dtype=pl.String)
    if pattern == "auto":
        counts = {name: _count(p, names) for name, p in PATTERNS.items()}
        chosen = PATTERNS[max(counts, key=counts.get)]
    else:
        chosen = PATTERNS.get(pattern) or _custom_pattern(pattern)
    table = _match(chosen, names)
    if table.is_empty():
        raise UserError(_no_match_message(listing, images, chosen, pattern))
    positions = pl.Series(images, dtype=pl.Int64).gather(table["index"])  # positions in the listing
    unmatched = sorted(set(listing.explicit) - set(positions.to_list())) if listing.explicit else []
    if unmatched:
        raise UserError(
            f"{listing.path(unmatched[0])} does not match the {chosen.name} naming ({chosen.regex.pattern}); "
            "pass a pattern that fits it"
        )
    table = table.with_columns(pl.Series(listing.dir_of, dtype=pl.Int64).gather(positions).alias("dir"))
    frames = _metadata(table, listing)
    channels = tuple(sorted(frames["Metadata_Channel"].unique().to_list()))
    if channel is None:
        channel = chosen.nuclei_channel if chosen.nuclei_channel is not None else channels[0]
    if channel not in channels:
        raise UserError(
            f"channel {channel} is not among the {chosen.name} frames found; "
            f"channels seen: {', '.join(map(str, channels))}"
        )
    frames = frames.filter(pl.col("Metadata_Channel") == channel)
    _refuse_duplicates(frames)
    return Discovery(
        frames=frames,
        pattern=chosen.name,
        regex=chosen.regex.pattern,
        channels=channels,
        channel=channel,
        ignored=len(images) - table.height,
    )


def discover_images(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """List image files (.tif, .tiff, .png, .C01, .DIB) from files and folders, whatever their names.

    Folders are searched recursively; hidden files are skipped; the result is sorted and has no
    duplicates. Used by ``predict``, which needs no plate layout.

    Raises
    ------
    UserError
        A source does not exist, an explicit file has no image suffix, or no image file is found.
    """
    listing = _Listing.of(sources)
    images = listing.images()
    image_set = set(images)
    for i in listing.explicit:
        if i not in image_set:
            raise UserError(f"{listing.path(i)} is not an image file (expected {_suffix_text()})")
    if not images:
        raise UserError(
            f"no image files ({_suffix_text()}) in {', '.join(map(str, sources))}"
            + (f"; {_plural(len(listing.names), 'other file')}, e.g. {min(listing.names)}" if listing.names else "")
        )
    return sorted(Path(listing.path(i)) for i in images)


@dataclass
class _Listing:
    """Every file under the sources: parallel lists of names and folder indices (no per-file objects)."""

    dirs: list[str]  # absolute folder paths, as reached (links not resolved)
    dir_of: list[int]
    names: list[str]
    explicit: list[int]  # positions of files given as sources

    @classmethod
    def of(cls, sources: Sequence[str | os.PathLike]) -> _Listing:
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        listing = cls([], [], [], [])
        walked: set[str] = set()  # real paths of the folders listed, so each is listed once
        files: list[str] = []
        for source in sources:
            path = os.path.abspath(os.fspath(source))
            if os.path.isdir(path):
                listing._walk(path, walked)
            elif os.path.isfile(path):
                files.append(path)
            else:
                kind = "file" if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES else "folder"
                raise UserError(f"{kind} not found: {source}")
        # Explicit files after the folders, so a file inside a listed folder is not counted twice.
        file_dirs: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        for path in files:
            folder, name = os.path.split(path)
            real = os.path.realpath(folder)
            if real in walked or (real, name) in seen:
                continue
            seen.add((real, name))
            if folder not in file_dirs:
                file_dirs[folder] = len(listing.dirs)
                listing.dirs.append(folder)
            listing.explicit.append(len(listing.names))
            listing.names.append(name)
            listing.dir_of.append(file_dirs[folder])
        return listing

    def _walk(self, top: str, walked: set[str]) -> None:
        stack = [(top, os.path.realpath(top))]
        while stack:
            folder, real = stack.pop()
            if real in walked:
                continue
            walked.add(real)
            index = len(self.dirs)
            self.dirs.append(folder)
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        name = entry.name
                        if name.startswith("."):
                            continue
                        if entry.is_dir():
                            # Resolve only links; a plain subfolder's real path is its parent's plus its name.
                            sub = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, name)
                            stack.append((entry.path, sub))
                        elif entry.is_file():
                            self.names.append(name)
                            self.dir_of.append(index)
            except OSError as exc:
                raise UserError(f"cannot list folder {folder}: {exc.strerror or exc}") from None

    def images(self) -> list[int]:
        """Positions of the files with an image suffix."""
        suffixes = IMAGE_SUFFIXES
        return [i for i, name in enumerate(self.names) if name[name.rfind(".") :].lower() in suffixes]

    def path(self, i: int) -> str:
        return os.path.join(self.dirs[self.dir_of[i]], self.names[i])


def _custom_pattern(regex: str) -> NamingPattern:
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise UserError(
            f"pattern {regex!r} is neither auto, {', '.join(PATTERNS)} nor a valid regular expression ({exc})"
        ) from None
    groups = _groups(compiled)
    if "well" not in groups and not {"row", "column"} <= groups.keys():
        raise UserError(
            f"pattern {regex!r} is not one of auto, {', '.join(PATTERNS)}, and as a regex it needs a named "
            "group 'well' or the groups 'row' and 'column', e.g. (?P<well>[A-P]\\d{2})"
        )
    return NamingPattern("custom", compiled)


def _groups(regex: re.Pattern) -> dict[str, str]:
    """Canonical group name -> the regex's own group name, for the groups this module reads."""
    groups: dict[str, str] = {}
    for name in regex.groupindex:
        key = _ALIASES.get(name.lower(), name.lower())
        if key in _FIELDS:
            if key in groups:
                raise UserError(f"pattern {regex.pattern!r} has two groups for {key}")
            groups[key] = name
    return groups


def _count(pattern: NamingPattern, names: pl.Series) -> int:
    """How many of ``names`` a built-in pattern matches."""
    matches = names.str.contains(pattern.regex.pattern)
    if pattern.exclude is not None:
        matches = matches & ~names.str.contains(pattern.exclude.pattern)
    return int(matches.sum())


def _match(pattern: NamingPattern, names: pl.Series) -> pl.DataFrame:
    """The names the pattern finds, with their captured groups.

    Returns columns ``index`` (position in ``names``), ``FileName_DNA`` and one string column per
    group read (canonical names; null where an optional group did not take part). Polars' Rust regex
    engine runs the pattern (~4x faster than a Python loop over 100,000 names); a pattern it cannot
    compile (look-around, back-references) runs through Python's ``re`` instead.
    """
    groups = _groups(pattern.regex)
    regex = pattern.regex.pattern
    frame = names.to_frame("FileName_DNA").with_row_index("index")
    try:
        matched = frame.filter(pl.col("FileName_DNA").str.contains(regex))
        captured = matched["FileName_DNA"].str.extract_groups(regex).struct.unnest()
        captured = captured.select(pl.col(name).alias(key) for key, name in groups.items())
    except pl.exceptions.ComputeError:
        found = [(i, m) for i, m in enumerate(map(pattern.regex.search, names.to_list())) if m is not None]
        matched = frame.select(pl.all().gather([i for i, _ in found]))
        captured = pl.DataFrame(
            {key: [m.group(name) for _, m in found] for key, name in groups.items()},
            schema=dict.fromkeys(groups, pl.String),
        )
    table = pl.concat([matched, captured], how="horizontal")
    if pattern.exclude is not None:
        table = table.filter(~pl.col("FileName_DNA").str.contains(pattern.exclude.pattern))
    return table


def _metadata(table: pl.DataFrame, listing: _Listing) -> pl.DataFrame:
    """Turn captured strings into the typed Metadata_* columns (see the module docstring)."""
    table = table.with_columns(
        pl.Series(listing.dirs, dtype=pl.String).gather(table["dir"]).alias("PathName_DNA"),
        pl.Series([_folder_plate(d) for d in listing.dirs], dtype=pl.String).gather(table["dir"]).alias("folder"),
    )
    plate = pl.coalesce("plate", "folder") if "plate" in table.columns else pl.col("folder")
    if "well" in table.columns:
        wells = {w: _parse_well(w, table) for w in table["well"].unique().to_list()}
        row = pl.col("well").replace_strict({w: r for w, (r, _) in wells.items()}, return_dtype=pl.String)
        column = pl.col("well").replace_strict({w: c for w, (_, c) in wells.items()}, return_dtype=pl.Int64)
    else:
        rows = {r: _parse_row(r, table) for r in table["row"].unique().to_list()}
        row = pl.col("row").replace_strict(rows, return_dtype=pl.String)
        column = _integer(table, "column", None)
    return (
        table.select(
            plate.alias("Metadata_Plate"),
            row.alias("Metadata_Row"),
            column.alias("Metadata_Column"),
            _integer(table, "site", 0).alias("Metadata_Site"),
            _integer(table, "channel", 0).alias("Metadata_Channel"),
            "PathName_DNA",
            "FileName_DNA",
        )
        .with_columns(
            (pl.col("Metadata_Row") + pl.col("Metadata_Column").cast(pl.String).str.zfill(2)).alias("Metadata_Well")
        )
        .sort(
            "Metadata_Plate",
            pl.col("Metadata_Row").str.len_chars(),
            "Metadata_Row",
            "Metadata_Column",
            "Metadata_Site",
            "Metadata_Channel",
            "PathName_DNA",
            "FileName_DNA",
        )
        .select(FRAME_COLUMNS)
    )


def _integer(table: pl.DataFrame, key: str, default: int | None) -> pl.Expr:
    """Group ``key`` as an Int64 expression; ``default`` where the group is absent or did not take part.

    With ``default=None`` the group is required in every file name.
    """
    if key not in table.columns:
        return pl.lit(default, dtype=pl.Int64)
    values = table[key].cast(pl.Int64, strict=False)
    bad = table.filter(values.is_null() & (table[key].is_not_null() | (default is None)))
    if not bad.is_empty():
        raise UserError(
            f"the {key} {bad[key][0]!r} in {bad['FileName_DNA'][0]} is not a number; "
            f"the pattern's {key} group must capture digits"
        )
    return pl.col(key).cast(pl.Int64).fill_null(default) if default is not None else pl.col(key).cast(pl.Int64)


def _parse_well(well: str | None, table: pl.DataFrame) -> tuple[str, int]:
    """``B7``, ``b07``, ``B007`` -> (``B``, 7)."""
    m = _WELL.fullmatch(well or "")
    if m is None:
        example = table.filter(pl.col("well").eq_missing(well))["FileName_DNA"][0]
        raise UserError(f"cannot read a well from {well!r} in {example}; expected a row letter and a column number")
    return m.group(1).upper(), int(m.group(2))


def _parse_row(row: str | None, table: pl.DataFrame) -> str:
    """Row letters, upper case; a number counts from 1 = A (27 = AA, as on 1536-well plates)."""
    if row and row.isalpha() and len(row) <= 2:
        return row.upper()
    if row and row.isdigit() and 0 < int(row) <= 26 * 27:
        n = int(row)
        return (chr(64 + (n - 1) // 26) if n > 26 else "") + chr(65 + (n - 1) % 26)
    example = table.filter(pl.col("row").eq_missing(row))["FileName_DNA"][0]
    raise UserError(f"cannot read a plate row from {row!r} in {example}; expected letters or a number from 1 (= A)")


def _folder_plate(folder: str) -> str:
    """The plate named by a folder: its own name, or its parent's when it is called ``Images``."""
    base = os.path.basename(folder)
    if base.lower() == "images":
        base = os.path.basename(os.path.dirname(folder)) or base
    return base


def _refuse_duplicates(frames: pl.DataFrame) -> None:
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel"]
    twice = frames.filter(pl.struct(keys).is_duplicated())
    if twice.is_empty():
        return
    first = twice.row(0, named=True)
    same = twice.filter(*(pl.col(k) == first[k] for k in keys))
    a, b = (os.path.join(r["PathName_DNA"], r["FileName_DNA"]) for r in same.head(2).iter_rows(named=True))
    groups = twice.select(keys).unique().height
    raise UserError(
        f"the same frame (plate {first['Metadata_Plate']}, well {first['Metadata_Well']}, site "
        f"{first['Metadata_Site']}, channel {first['Metadata_Channel']}) was found twice: {a} and {b}"
        + (f" ({groups - 1} more frames are duplicated)" if groups > 1 else "")
        + "; give each frame once (e.g. one folder per plate, one file format, one z-plane or time point)"
    )


def _no_match_message(listing: _Listing, images: list[int], chosen: NamingPattern, asked: str) -> str:
    tried = f"the {', '.join(PATTERNS)} naming patterns" if asked == "auto" else f"the {chosen.name} pattern"
    where = ", ".join(listing.dirs[:3]) + (", ..." if len(listing.dirs) > 3 else "")
    if not images:
        other = f" ({_plural(len(listing.names), 'other file')}, e.g. {min(listing.names)})" if listing.names else ""
        return f"no image files ({_suffix_text()}) in {where}{other}"
    example = min(listing.names[i] for i in images)
    return (
        f"no frames matched {tried} in {where}; {_plural(len(images), 'image file')} seen, e.g. {example}; "
        "pass a regex with named groups plate, well (or row and column), site and channel"
    )


def _some(items: list[str], limit: int = 5) -> str:
    return ", ".join(map(str, items[:limit])) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _suffix_text() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
