"""The Cellomics ``.C01`` / ``.DIB`` format of the CellInsight CX7, read: :func:`read_c01`, :func:`read_dib`,
:func:`read_c01_header`. The layout (after Bio-Formats' ``CellomicsReader``: a 52-byte header, then the pixels, the
whole zlib-compressed behind a 4-byte marker in a ``.C01``) and its writer live in :mod:`nucleiscreen.cellomics`,
below the engine, where the simulator writes them too.

Besides the claims every format's header is held to (:mod:`~nucleiscreen.engine.readers.checks`), a C01 starts with
the marker 16, and its stream and a DIB hold exactly the pixels the header describes: more would mean a header that
understates the frame, which would be cut silently to the wrong shape. Bytes after the end of a C01's zlib stream are
ignored (the stream's checksum covers header and pixels).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np

from nucleiscreen.cellomics import C01_MARKER, HEADER_BYTES, HEADER_FIELDS
from nucleiscreen.engine.readers.checks import (
    _MAX_DEFLATE_RATIO,
    FrameReadError,
    _check_claim,
    _fill,
    _open,
    _read_bytes,
)

_PIXEL_TYPES = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}


@dataclass(frozen=True)
class CellomicsHeader:
    """The header of a Cellomics ``.C01`` / ``.DIB`` file.

    Attributes
    ----------
    width, height : int
        Frame size in pixels (columns, rows).
    planes : int
        Number of planes stored one after the other.
    bits_per_pixel : int
        8, 16 or 32; pixels are little-endian unsigned integers.
    compression : int
        The header's compression field (0 for the uncompressed pixels this reader supports).
    pixels_per_metre_x, pixels_per_metre_y : int
        Pixel density; 0 when the instrument did not record it.
    """

    width: int
    height: int
    planes: int
    bits_per_pixel: int
    compression: int
    pixels_per_metre_x: int
    pixels_per_metre_y: int

    @property
    def pixel_size_um(self) -> float | None:
        """Pixel width in µm, ``1e6 / pixels_per_metre_x``, or None when the density is 0."""
        return 1e6 / self.pixels_per_metre_x if self.pixels_per_metre_x > 0 else None

    @property
    def plane_bytes(self) -> int:
        """Bytes of one plane: ``width * height * bits_per_pixel / 8``."""
        return self.width * self.height * self.bits_per_pixel // 8

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole inflated file: the 52-byte header plus every plane."""
        return HEADER_BYTES + self.planes * self.plane_bytes


def read_c01(path: str | os.PathLike, plane: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Read one plane of a Cellomics ``.C01`` file (zlib-compressed DIB, see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.C01`` file (the suffix is not checked).
    plane : int
        Which plane of a multi-plane file to return; 0, the first, by default. CX7 screen frames
        hold one plane.
    out : numpy.ndarray, optional
        Buffer of shape ``(height, width)`` to copy the plane into; see :func:`read_frame`.

    Returns
    -------
    numpy.ndarray
        ``out`` when given, else a new writable (height, width) array: uint8, uint16 or uint32 for
        8, 16 or 32 bits per pixel.

    Raises
    ------
    FrameReadError
        Missing file, no C01 marker, broken or truncated zlib stream, invalid header (width, height or
        planes not positive, bits per pixel not 8, 16 or 32), pixel data shorter or longer than the
        header says, or ``plane`` out of range.
    """
    dib = _inflate(_read_bytes(path), path)
    return _plane(dib, _parse_header(dib, path), plane, out, path)


def read_dib(path: str | os.PathLike, plane: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Read one plane of a Cellomics ``.DIB`` file (a ``.C01`` without marker and zlib wrapper).

    Parameters, returns and errors as :func:`read_c01`.
    """
    with _open(path) as fh:
        header = _parse_header(fh.read(HEADER_BYTES), path)
        _check_length(os.fstat(fh.fileno()).st_size, header, path)  # before allocating what the header claims
        fh.seek(0)
        dib = np.empty(header.total_bytes, np.uint8)
        dib = dib[: fh.readinto(dib)]
    return _plane(dib, header, plane, out, path)


def read_c01_header(path: str | os.PathLike) -> CellomicsHeader:
    """Read only the header of a ``.C01`` or ``.DIB`` file (by suffix); inflates just its first bytes.

    Raises
    ------
    FrameReadError
        Missing file or a header that cannot be decoded.
    """
    if os.path.splitext(path)[1].lower() == ".dib":
        with _open(path) as fh:
            return _parse_header(fh.read(HEADER_BYTES), path)
    with _open(path) as fh:
        start = fh.read(4 + 1024)
    return _parse_header(_inflate_header(start, path), path)


def _inflate(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """Inflate the zlib stream after a C01's 4-byte marker into a writable uint8 array: the DIB the header describes,
    or what the stream holds when it ends early, or one byte more than the header's size when it holds more (``_plane``
    refuses both)."""
    header = _parse_header(_inflate_header(data, path), path)
    stream = memoryview(data)[4:]
    size = header.total_bytes
    _check_claim(path, _describe(header), size - HEADER_BYTES, len(stream), _MAX_DEFLATE_RATIO)
    # The header gives the exact inflated size, so libdeflate can inflate in one call into a
    # buffer we own (2-3x faster than zlib.decompress, and the pixels come back writable).
    dib = np.empty(size, dtype=np.uint8)
    try:
        if len(imagecodecs.deflate_decode(stream, out=dib)) == size:
            return dib
    except imagecodecs.DeflateError:
        pass  # inflate again with zlib below for a precise diagnosis
    inflater = zlib.decompressobj()
    try:
        dib = inflater.decompress(stream, size + 1)  # bounded: a stream may inflate to 1032 times its size
    except zlib.error as exc:
        raise FrameReadError(f"{path}: corrupt C01 zlib stream ({exc})") from None
    if len(dib) < size and not inflater.eof:
        raise FrameReadError(
            f"{path}: truncated, the zlib stream breaks off after {max(len(dib) - HEADER_BYTES, 0)} of the "
            f"{size - HEADER_BYTES} bytes of pixel data the header ({_describe(header)}) needs"
        )
    return np.frombuffer(dib, dtype=np.uint8).copy()


def _inflate_header(data: bytes, path: str | os.PathLike) -> bytes:
    """Check a C01's marker and inflate the first 52 bytes of its stream."""
    if len(data) < 6:
        raise FrameReadError(f"{path}: {len(data)} bytes, too short for a C01 file")
    marker = int.from_bytes(data[:4], "big")
    if marker != C01_MARKER:
        raise FrameReadError(f"{path}: not a C01 file, bytes 0-3 read {marker}, not the C01 marker {C01_MARKER}")
    try:
        head = zlib.decompressobj().decompress(memoryview(data)[4 : 4 + 1024], HEADER_BYTES)
    except zlib.error as exc:
        raise FrameReadError(f"{path}: corrupt C01 file, no zlib stream after the marker ({exc})") from None
    if len(head) < HEADER_BYTES:
        raise FrameReadError(f"{path}: truncated, the zlib stream ends before the {HEADER_BYTES}-byte header")
    return head


def _parse_header(dib, path: str | os.PathLike) -> CellomicsHeader:
    """Decode and check the 52-byte header at the start of ``dib`` (bytes or a uint8 array)."""
    if len(dib) < HEADER_BYTES:
        raise FrameReadError(f"{path}: {len(dib)} bytes, shorter than the {HEADER_BYTES}-byte Cellomics header")
    header = CellomicsHeader(*HEADER_FIELDS.unpack_from(dib, 0)[:7])
    if header.width <= 0 or header.height <= 0 or header.planes <= 0:
        raise FrameReadError(
            f"{path}: invalid Cellomics header (width {header.width}, height {header.height}, planes {header.planes})"
        )
    if header.bits_per_pixel not in _PIXEL_TYPES:
        raise FrameReadError(f"{path}: {header.bits_per_pixel} bits per pixel is not supported (8, 16 or 32)")
    _check_claim(path, _describe(header), header.total_bytes - HEADER_BYTES)
    return header


def _describe(header: CellomicsHeader) -> str:
    return (f"{header.width}x{header.height} pixels (width x height), {header.planes} plane(s) of "
            f"{header.bits_per_pixel} bits")


def _check_length(length: int, header: CellomicsHeader, path: str | os.PathLike) -> None:
    """Refuse a DIB of ``length`` bytes that holds less or more pixel data than its header describes."""
    need = header.total_bytes - HEADER_BYTES
    if length - HEADER_BYTES < need:
        note = f" (compression field {header.compression}: compressed pixels are not supported)"
        raise FrameReadError(
            f"{path}: truncated, {length - HEADER_BYTES} bytes of pixel data where the header "
            f"({_describe(header)}) needs {need}{note if header.compression else ''}"
        )
    if length - HEADER_BYTES > need:
        raise FrameReadError(
            f"{path}: more pixel data than the header ({_describe(header)}) describes ({need} bytes); a corrupt header"
        )


def _plane(
    dib: np.ndarray, header: CellomicsHeader, plane: int, out: np.ndarray | None, path: str | os.PathLike
) -> np.ndarray:
    """Cut plane ``plane`` out of an inflated DIB, as (height, width) pixels of the header's type."""
    _check_length(len(dib), header, path)
    if not 0 <= plane < header.planes:
        raise FrameReadError(f"{path}: plane {plane} requested, the file has {header.planes}")
    start = HEADER_BYTES + plane * header.plane_bytes
    dtype = _PIXEL_TYPES[header.bits_per_pixel]
    pixels = dib[start : start + header.plane_bytes].view(dtype).reshape(header.height, header.width)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)  # a no-op on little-endian machines
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    return _fill(pixels, out, path)
