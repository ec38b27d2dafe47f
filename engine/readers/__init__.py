"""Decode one frame from disk: TIFF, PNG and the Cellomics ``.C01`` / ``.DIB`` format of the CellInsight CX7.

Every reader returns one 2-D array (rows x columns) and raises :class:`FrameReadError` for a file it
cannot decode, so the engine can record the frame in its error table and go on with the next one. Float frames are
returned as stored, NaN and infinities included: the engine checks their content.

``.c01`` and ``.dib`` files are read by their suffix, ``.tif``, ``.tiff`` and ``.png`` files by their first bytes:
a PNG named ``.tif`` (or a TIFF named ``.png``) is read as what it is, since both are lossless and their signatures
unambiguous, while a JPEG under any of these names is refused: its pixels are lossy, not a microscope's counts.

What a header claims is checked before any pixel buffer is allocated, so a corrupt header fails its frame instead of
stopping the run with a MemoryError (or, worse, yielding a frame of the wrong shape).

This module is the public surface and the dispatch by suffix and signature; the formats, one module a family:

- :mod:`~nucleiscreen.engine.readers.checks`: :class:`FrameReadError`, ``MAX_FRAME_BYTES`` and the checks every
  format shares (a header's claims against the file's size, one grey-level channel, the ``out`` buffer);
- :mod:`~nucleiscreen.engine.readers.cellomics`: ``.C01`` / ``.DIB`` (their layout, read and write);
- :mod:`~nucleiscreen.engine.readers.tiff`: plain TIFF frames by the engine's own reader, the rest by tifffile;
- :mod:`~nucleiscreen.engine.readers.png`: PNG.
"""

from __future__ import annotations

import os

import numpy as np

from nucleiscreen.engine.readers.cellomics import CellomicsHeader, read_c01, read_c01_header, read_dib
from nucleiscreen.engine.readers.checks import MAX_FRAME_BYTES, FrameReadError, _fill, _open, _read_bytes
from nucleiscreen.engine.readers.png import _decode_png
from nucleiscreen.engine.readers.tiff import _plain_tiff, _read_tifffile

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_FRAME_BYTES",
    "CellomicsHeader",
    "FrameReadError",
    "read_c01",
    "read_c01_header",
    "read_dib",
    "read_frame",
]

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".c01", ".dib"})
"""Lower-case file suffixes :func:`read_frame` decodes."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def read_frame(path: str | os.PathLike, out: np.ndarray | None = None) -> np.ndarray:
    """Read one frame, choosing the decoder by the file's suffix (case-insensitive).

    ``.tif``/``.tiff`` go through tifffile (compressed TIFFs through imagecodecs), ``.png`` through
    ``imagecodecs.png_decode``, ``.c01`` and ``.dib`` through :func:`read_c01` / :func:`read_dib`
    (first plane).

    Parameters
    ----------
    path : str or os.PathLike
        The image file.
    out : numpy.ndarray, optional
        A C-contiguous buffer of the frame's shape to fill, e.g. one slot of a batch. An
        uncompressed single-page TIFF of exactly ``out``'s dtype is read straight into it; other
        frames are decoded and copied in. The frame's dtype must cast safely to ``out.dtype``
        (uint8 into uint16 is fine, uint16 into uint8 is not).

    Returns
    -------
    numpy.ndarray
        ``out`` when given, else a new 2-D array (rows x columns): uint8 or uint16 for the usual
        microscope frames, float32 for a floating-point TIFF, other integer types unchanged. An RGB or
        RGBA image whose colour channels are all equal is reduced to its first channel (alpha is
        ignored).

    Raises
    ------
    FrameReadError
        The file is missing, cannot be decoded, is truncated, claims more pixels than it can hold (see
        :mod:`~nucleiscreen.engine.readers.checks`), is a JPEG, is a stack of frames, has several
        different colour channels, or does not fit ``out``.
    """
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, out, suffix)
        if suffix == ".png":
            return _read_png(path, out, suffix)
        if suffix == ".c01":
            return read_c01(path, out=out)
        if suffix == ".dib":
            return read_dib(path, out=out)
    except (FrameReadError, MemoryError):  # MemoryError: the machine, not the file (claims are checked first)
        raise
    except Exception as exc:  # every decoder has its own exception types; all mean "cannot decode"
        raise FrameReadError(f"{path}: cannot decode {suffix} file ({type(exc).__name__}: {exc})") from exc
    raise FrameReadError(f"{path}: unsupported file type {suffix!r} (expected one of {_suffix_list()})")


def _read_tiff(path: str | os.PathLike, out: np.ndarray | None, suffix: str) -> np.ndarray:
    """A ``.tif``/``.tiff`` file: the plain-TIFF reader first, then tifffile, or the PNG reader by its signature."""
    image = _plain_tiff(path)
    if image is not None:
        return _fill(image, out, path)
    with _open(path) as fh:
        head = fh.read(len(_PNG_SIGNATURE))
    if _file_format(head, path, suffix) == "png":
        return _read_png(path, out, suffix)
    return _read_tifffile(path, out)


def _read_png(path: str | os.PathLike, out: np.ndarray | None, suffix: str) -> np.ndarray:
    """A ``.png`` file (or a PNG named ``.tif``): decoded as a PNG, or by tifffile when its signature says TIFF."""
    data = _read_bytes(path)
    if _file_format(data[: len(_PNG_SIGNATURE)], path, suffix) == "tiff":
        return _read_tifffile(path, out)
    return _fill(_decode_png(data, path), out, path)


def _file_format(head: bytes, path: str | os.PathLike, suffix: str) -> str:
    """"tiff" or "png" by a file's first 8 bytes; FrameReadError for a JPEG or anything else."""
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if head.startswith(_JPEG_SIGNATURE):
        raise FrameReadError(f"{path}: a JPEG file (lossy) named {suffix}; nucleiscreen reads TIFF, PNG and C01")
    expected = "PNG" if suffix == ".png" else "TIFF"
    what = "an empty file" if not head else f"it starts with {head!r}"
    raise FrameReadError(f"{path}: cannot decode {suffix} file: not a {expected} file ({what})")


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
