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

from nucleiscreen.engine.channels import NUCLEI, Channels, path_columns
from nucleiscreen.engine.readers import IMAGE_SUFFIXES
from nucleiscreen.errors import UserError

METADATA_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Column", "Metadata_Site",
                    "Metadata_Channel"]
"""The first columns of ``Discovery.frames`` (CellProfiler's names; the image table starts with them), then each
channel's ``PathName_<name>``, ``FileName_<name>`` (``Channels.columns``)."""
_FIELD_KEYS = METADATA_COLUMNS[:5]  # a field: its plate, well and site

__all__ = ["METADATA_COLUMNS", "PATTERNS", "Discovery", "NamingPattern", "discover", "discover_images"]


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
    prefixes : tuple of str
        What the names write before the channel number (``d`` for ``d0``); empty for a custom regex (any).
    """

    name: str
    regex: re.Pattern
    nuclei_channel: int | None = None
    exclude: re.Pattern | None = None
    prefixes: tuple[str, ...] = ()


_IMAGE_EXT = r"\.(?i:c01|dib|tiff?|png)$"
PATTERNS: dict[str, NamingPattern] = {
    # CellInsight CX7 / Cellomics: MFGTMPcx7_170702000001_B14f07d0.C01 (field and channel 0-based).
    "cx7": NamingPattern(
        "cx7",
        re.compile(r"^(?P<plate>.+?)_(?P<well>[A-P]\d{2})f(?P<site>\d{2,3})[do](?P<channel>\d+)" + _IMAGE_EXT),
        nuclei_channel=0,
        prefixes=("d", "o"),
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
        prefixes=("w",),
    ),
    # Opera Phenix / Operetta (Harmony): r01c01f01p01-ch1sk1fk1fl1.tiff, row 01 = A; no plate in the name.
    "opera": NamingPattern(
        "opera",
        re.compile(
            r"^r(?P<row>\d{2})c(?P<column>\d{2})f(?P<site>\d{2,})p(?P<plane>\d{2})"
            r"-ch(?P<channel>\d+)sk(?P<timepoint>\d+)fk\d+fl\d+\.(?i:tiff?)$"
        ),
        nuclei_channel=1,
        prefixes=("ch",),
    ),
}

_ALIASES = {"col": "column", "field": "site", "channelnumber": "channel"}
_FIELDS = ("plate", "well", "row", "column", "site", "channel")
_WELL = re.compile(r"([A-Za-z]{1,2})(\d{1,3})")


@dataclass(frozen=True)
class Discovery:
    """The fields found (each with a frame of every channel asked for), and what else was seen.

    Attributes
    ----------
    frames : polars.DataFrame
        One row per field (an image set, CellProfiler's NamesAndTypes), sorted by plate, well (row, then
        column) and site, with columns ``Metadata_Plate`` (str), ``Metadata_Well`` (str, ``B07``),
        ``Metadata_Row`` (str, ``B``), ``Metadata_Column`` (int), ``Metadata_Site`` (int),
        ``Metadata_Channel`` (int, the nuclei channel's number), then for each channel ``PathName_<name>``
        (str, absolute folder) and ``FileName_<name>`` (str, file name).
    pattern : str
        Name of the naming pattern used (``custom`` for a user regex).
    regex : str
        Its regular expression.
    channels : tuple of int
        Every channel number seen, sorted.
    channel : int
        The nuclei channel's number.
    ignored : int
        Image files in the folders that did not match the pattern (thumbnails included).
    names : Channels
        The channels of ``frames``, their numbers resolved.
    incomplete : polars.DataFrame
        The fields that lack a frame of some channel: ``frames``' columns (null where a frame is missing) and
        ``Missing`` (the names of the channels missing). Not in ``frames``.
    """

    frames: pl.DataFrame
    pattern: str
    regex: str
    channels: tuple[int, ...]
    channel: int
    ignored: int = 0
    names: Channels = Channels()
    incomplete: pl.DataFrame | None = None

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
        names = self.names
        what = (f"{frames.height} frames of channel {self.channel}" if len(names.names) == 1 else
                f"{frames.height} fields of {len(names.names)} channels")
        using = (f"using channel {self.channel}" if len(names.names) == 1 and names.nuclei == NUCLEI else
                 "using " + ", ".join(f"{n}={num}" + (" (nuclei)" if n == names.nuclei else "")
                                      for n, num in zip(names.names, names.numbers)))
        lines = [
            f"pattern: {self.pattern} ({what}"
            + (f"; {_plural(self.ignored, 'image file')} did not match)" if self.ignored else ")"),
            f"plates: {len(plates)} ({_some(plates)})",
            f"wells: {fields.height}",
            f"fields per well: {per_well_text}",
            f"channels seen: {', '.join(map(str, self.channels))}; {using}",
        ]
        if self.incomplete is not None and self.incomplete.height:
            examples = [f"{p} {w} site {s} (no {', '.join(m)})" for p, w, s, m in
                        self.incomplete.select("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Missing")
                        .iter_rows()]
            lines.append(f"fields lacking a channel: {self.incomplete.height} ({_some(examples)}); each becomes a "
                         "row of the error table")
        if missing.is_empty():
            lines.append("missing fields: none")
        else:
            examples = [f"{p} {w} ({n} of {e})" for p, w, n, e in missing.iter_rows()]
            lines.append(f"missing fields: {_plural(missing.height, 'well')} with fewer: {_some(examples)}")
        return "\n".join(lines)


def discover(sources: Sequence[str | os.PathLike], pattern: str = "auto", channel: int | None = None,
             channels: Channels | None = None) -> Discovery:
    """Find the fields of a screen in folders (searched recursively) and explicit files, with a frame of each
    channel asked for.

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
        The nuclei channel's number as in the file names, when ``channels`` is not given. Default: the pattern's
        nuclei channel (cx7 0 = ``d0``, imagexpress 1 = ``w1``, opera 1 = ``ch1``; the lowest channel for a
        custom regex).
    channels : Channels, optional
        The channels of a field by name (``--channels``); default: the nuclei channel alone, named ``DNA``.

    Returns
    -------
    Discovery

    Raises
    ------
    UserError
        A source does not exist, the regex is invalid, no file matches, a given file does not
        match, a channel is not present, or the same plate/well/site/channel is found twice.
    """
    if channels is None:
        channels = Channels(numbers=(channel,))
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
    seen = tuple(sorted(frames["Metadata_Channel"].unique().to_list()))
    wanted = channels.resolved(chosen.nuclei_channel if chosen.nuclei_channel is not None else seen[0])
    _check_channels(wanted, seen, chosen)
    frames = frames.filter(pl.col("Metadata_Channel").is_in(list(wanted.numbers)))
    _refuse_duplicates(frames)
    sets, incomplete = _image_sets(frames, wanted)
    return Discovery(
        frames=sets,
        pattern=chosen.name,
        regex=chosen.regex.pattern,
        channels=seen,
        channel=wanted.number[wanted.nuclei],
        ignored=len(images) - table.height,
        names=wanted,
        incomplete=incomplete,
    )


def _check_channels(wanted: Channels, seen: tuple[int, ...], pattern: NamingPattern) -> None:
    """One line for a channel asked for that no file has, or a token written as another instrument's."""
    for name, number, prefix in zip(wanted.names, wanted.numbers, wanted.prefixes):
        token = f"{prefix}{number}"
        if prefix and pattern.prefixes and prefix not in pattern.prefixes:
            raise UserError(f"--channels {name}={token}: {pattern.name} file names write channels as "
                            f"{' or '.join(p + str(number) for p in pattern.prefixes)}")
        if number not in seen:
            what = f"channel {name}={token}" if len(wanted.names) > 1 or name != NUCLEI else f"channel {number}"
            raise UserError(f"{what} is not among the {pattern.name} frames found; channels seen: "
                            f"{', '.join(map(str, seen))}")


def _image_sets(frames: pl.DataFrame, channels: Channels) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The frames (one row per file) as image sets (one row per field, each channel's file in its own columns,
    ``Metadata_Channel`` the nuclei channel's number), and the fields that lack a channel's frame."""
    number = channels.number
    nuclei = frames.filter(pl.col("Metadata_Channel") == number[channels.nuclei]).rename(
        dict(zip(("PathName", "FileName"), path_columns(channels.nuclei))))
    if len(channels.names) == 1:
        return nuclei, nuclei.clear().with_columns(pl.lit([], pl.List(pl.String)).alias("Missing"))
    fields = frames.select(_FIELD_KEYS).unique(maintain_order=True)
    sets = fields.join(nuclei, on=_FIELD_KEYS, how="left")
    for name in channels.names:
        if name != channels.nuclei:
            own = frames.filter(pl.col("Metadata_Channel") == number[name]).select(
                *_FIELD_KEYS, *(pl.col(c).alias(n) for c, n in zip(("PathName", "FileName"), path_columns(name))))
            sets = sets.join(own, on=_FIELD_KEYS, how="left")
    sets = sets.with_columns(pl.col("Metadata_Channel").fill_null(number[channels.nuclei])).select(
        *METADATA_COLUMNS, *channels.columns())
    missing = pl.concat_list([pl.when(pl.col(path_columns(n)[1]).is_null()).then(pl.lit(n)) for n in channels.names]
                             ).list.drop_nulls()
    sets = sets.with_columns(missing.alias("Missing"))
    complete = pl.col("Missing").list.len() == 0
    return sets.filter(complete).drop("Missing"), sets.filter(~complete)


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

    Returns columns ``index`` (position in ``names``), ``FileName`` and one string column per
    group read (canonical names; null where an optional group did not take part). Polars' Rust regex
    engine runs the pattern (~4x faster than a Python loop over 100,000 names); a pattern it cannot
    compile (look-around, back-references) runs through Python's ``re`` instead.
    """
    groups = _groups(pattern.regex)
    regex = pattern.regex.pattern
    frame = names.to_frame("FileName").with_row_index("index")
    try:
        matched = frame.filter(pl.col("FileName").str.contains(regex))
        captured = matched["FileName"].str.extract_groups(regex).struct.unnest()
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
        table = table.filter(~pl.col("FileName").str.contains(pattern.exclude.pattern))
    return table


def _metadata(table: pl.DataFrame, listing: _Listing) -> pl.DataFrame:
    """Turn captured strings into the typed Metadata_* columns (see the module docstring); one row per file, with
    its ``PathName`` and ``FileName``."""
    table = table.with_columns(
        pl.Series(listing.dirs, dtype=pl.String).gather(table["dir"]).alias("PathName"),
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
            "PathName",
            "FileName",
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
            "PathName",
            "FileName",
        )
        .select(*METADATA_COLUMNS, "PathName", "FileName")
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
            f"the {key} {bad[key][0]!r} in {bad['FileName'][0]} is not a number; "
            f"the pattern's {key} group must capture digits"
        )
    return pl.col(key).cast(pl.Int64).fill_null(default) if default is not None else pl.col(key).cast(pl.Int64)


def _parse_well(well: str | None, table: pl.DataFrame) -> tuple[str, int]:
    """``B7``, ``b07``, ``B007`` -> (``B``, 7)."""
    m = _WELL.fullmatch(well or "")
    if m is None:
        example = table.filter(pl.col("well").eq_missing(well))["FileName"][0]
        raise UserError(f"cannot read a well from {well!r} in {example}; expected a row letter and a column number")
    return m.group(1).upper(), int(m.group(2))


def _parse_row(row: str | None, table: pl.DataFrame) -> str:
    """Row letters, upper case; a number counts from 1 = A (27 = AA, as on 1536-well plates)."""
    if row and row.isalpha() and len(row) <= 2:
        return row.upper()
    if row and row.isdigit() and 0 < int(row) <= 26 * 27:
        n = int(row)
        return (chr(64 + (n - 1) // 26) if n > 26 else "") + chr(65 + (n - 1) % 26)
    example = table.filter(pl.col("row").eq_missing(row))["FileName"][0]
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
    a, b = (os.path.join(r["PathName"], r["FileName"]) for r in same.head(2).iter_rows(named=True))
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
