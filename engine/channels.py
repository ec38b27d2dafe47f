"""The channels of a field as data: names the user chooses, each the frames of one channel number of the file names.

``--channels DNA=d0,Lyso=d1,Cell=d2`` names the channels of a screen (the CX7's ``d0``, ImageXpress' ``w1``,
Opera's ``ch1``, or the number a custom pattern's ``channel`` group captures); the first, or ``--nuclei-channel``,
is the one segmented. Every table column that belongs to a channel carries its name, as CellProfiler's do:
``PathName_<name>``, ``FileName_<name>`` of the image table, ``Intensity_MeanIntensity_<name>`` of the objects,
``ImageQuality_FocusScore_<name>``. Without ``--channels`` a screen has one channel, the pattern's nuclei channel,
named ``NUCLEI`` (``DNA``, CellProfiler's name for a Hoechst or DAPI image).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nucleiscreen.errors import UserError

NUCLEI = "DNA"  # the nuclei channel's name when the user names none

_TOKEN = re.compile(r"([A-Za-z]*)(\d+)")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # CellProfiler's image names: letters and digits, no underscore


@dataclass(frozen=True)
class Channels:
    """The channels of a field: ``names`` in order, each with the channel ``numbers`` of the file names (None: the
    naming pattern's nuclei channel) and the ``prefixes`` written before them (``d``, ``w``, ``ch``; "" when
    not given); ``nuclei`` is the channel the network segments."""

    names: tuple[str, ...] = (NUCLEI,)
    numbers: tuple[int | None, ...] = (None,)
    prefixes: tuple[str, ...] = ("",)
    nuclei: str = NUCLEI
    named: bool = False  # given by --channels: every channel is measured (without, today's nuclei tables alone)

    @classmethod
    def parse(cls, text: str | None, nuclei: str | None = None, number: int | None = None) -> Channels:
        """``--channels NAME=TOKEN,...`` (a token is the file name's channel, ``d0``, ``w1``, ``ch1`` or a number),
        ``--nuclei-channel NAME`` and the older ``--channel N`` (the nuclei channel's number, named ``DNA``); one line
        for anything else."""
        if text is None:
            if nuclei is not None and nuclei != NUCLEI:
                raise UserError(f"--nuclei-channel {nuclei}: no such channel; name the channels with --channels")
            return cls(numbers=(number,))
        if number is not None:
            raise UserError("--channel N and --channels NAME=TOKEN,... say the same thing: give one")
        names, numbers, prefixes = [], [], []
        for item in (t.strip() for t in text.split(",")):
            name, sep, token = (s.strip() for s in item.partition("="))
            m = _TOKEN.fullmatch(token)
            if not sep or not name or m is None:
                raise UserError(f"--channels takes NAME=TOKEN pairs, e.g. DNA=d0,Lyso=d1 (the token as in the file "
                                f"names: d0, w1, ch1 or a number), not {item!r}")
            if not _NAME.fullmatch(name):
                raise UserError(f"--channels: channel name {name!r} must start with a letter and hold only letters "
                                "and digits (it becomes part of column names such as Intensity_MeanIntensity_<name>)")
            if name in names:
                raise UserError(f"--channels: the name {name} is given twice")
            if int(m.group(2)) in numbers:
                raise UserError(f"--channels: channel {token} is named twice ({names[numbers.index(int(m.group(2)))]} "
                                f"and {name})")
            names.append(name)
            numbers.append(int(m.group(2)))
            prefixes.append(m.group(1).lower())
        nuclei = nuclei or names[0]
        if nuclei not in names:
            raise UserError(f"--nuclei-channel {nuclei} is not one of --channels' names ({', '.join(names)})")
        return cls(tuple(names), tuple(numbers), tuple(prefixes), nuclei, named=True)

    def resolved(self, nuclei_number: int) -> Channels:
        """These channels with the nuclei channel's number filled in where it was left to the pattern."""
        numbers = tuple(nuclei_number if n is None else n for n in self.numbers)
        return Channels(self.names, numbers, self.prefixes, self.nuclei, self.named)

    @property
    def number(self) -> dict[str, int | None]:
        return dict(zip(self.names, self.numbers))

    @property
    def markers(self) -> tuple[str, ...]:
        """The channels other than the nuclei channel."""
        return tuple(n for n in self.names if n != self.nuclei)

    def columns(self) -> list[str]:
        """The image table's file columns: ``PathName_<name>``, ``FileName_<name>`` of each channel."""
        return [c for name in self.names for c in path_columns(name)]

    def as_dict(self) -> dict:
        return {"names": list(self.names), "numbers": list(self.numbers), "nuclei": self.nuclei, "named": self.named}


def path_columns(name: str) -> tuple[str, str]:
    """The (folder, file name) columns of channel ``name``'s frame in the image table."""
    return f"PathName_{name}", f"FileName_{name}"


def frame_path(row: dict, name: str) -> Path:
    """The file of channel ``name``'s frame of an image-table row."""
    folder, file = path_columns(name)
    return Path(row[folder]) / row[file]
