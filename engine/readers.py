"""Decode one frame from disk: TIFF, PNG and the Cellomics ``.C01`` / ``.DIB`` format of the CellInsight CX7.

Every reader returns one 2-D array (rows x columns) and raises :class:`FrameReadError` for a file it
cannot decode, so the engine can record the frame in its error table and go on with the next one. Float frames are
returned as stored, NaN and infinities included: the engine checks their content.

``.c01`` and ``.dib`` files are read by their suffix, ``.tif``, ``.tiff`` and ``.png`` files by their first bytes:
a PNG named ``.tif`` (or a TIFF named ``.png``) is read as what it is, since both are lossless and their signatures
unambiguous, while a JPEG under any of these names is refused: its pixels are lossy, not a microscope's counts.

What a header claims is checked before any pixel buffer is allocated, so a corrupt header fails its frame instead of
stopping the run with a MemoryError (or, worse, yielding a frame of the wrong shape):

- a frame of more than ``MAX_FRAME_BYTES`` (2 GiB) of pixels is refused whatever the file's size;
- uncompressed pixels (TIFF, DIB) must lie inside the file; compressed ones must fit the file's size times the most
  their codec can inflate: 1032:1 for deflate (C01, PNG), 65536:1 for any TIFF codec (deflate 1032:1, LZW under
  4096:1, PackBits 64:1, zstd 32768:1);
- a TIFF must list every strip or tile its shape needs (tifffile would fill missing ones with zeros);
- a C01 starts with the marker 16, and its stream and a DIB hold exactly the pixels the header describes: more would
  mean a header that understates the frame, which would be cut silently to the wrong shape. Bytes after the end of a
  C01's zlib stream are ignored (the stream's checksum covers header and pixels).

The Cellomics format (its header, and the writer the simulator uses) is :mod:`nucleiscreen.cellomics`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np
import tifffile

from nucleiscreen.cellomics import C01_MARKER, HEADER_BYTES, HEADER_FIELDS

# tifffile logs what it finds wrong in a header (ERROR lines in the middle of a progress bar); the engine reports a
# bad frame itself, as one row of the error table, so tifffile's own log lines are dropped.
logging.getLogger("tifffile").addFilter(lambda record: False)

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

MAX_FRAME_BYTES = 2**31
"""The most pixel data one file may decode to (a CX7 frame is 8 MiB); a header that claims more is refused."""

_PIXEL_TYPES = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}
# The most a codec inflates its input, so a header that claims more pixels than file size x ratio is corrupt (and must
# not make us allocate gigabytes). Deflate (C01, PNG): 1032:1. TIFF's codecs: deflate; LZW under 4096:1 (a 9-12 bit
# code stands for at most 4096 bytes); PackBits 64:1; zstd 32768:1 (an RLE block: a 3-byte header and 1 byte for
# 128 KiB). Measured on a blank 2048^2 uint16 frame in one strip: zstd -19 15,900:1, LZMA 5,200:1.
_MAX_DEFLATE_RATIO = 1032
_MAX_TIFF_RATIO = 2**16

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# PNG colour type: (samples per pixel, allowed bit depths); palette images decode to RGB(A), 4 samples at most
_PNG_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}


class FrameReadError(ValueError):
    """A frame that cannot be decoded: missing, corrupt, truncated, or not a single-channel image.

    The message is one line that starts with the file's path and says what is wrong with it.
    """


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
        the module docstring), is a JPEG, is a stack of frames, has several different colour channels,
        or does not fit ``out``.
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


# A plain TIFF (below) larger than this goes through tifffile, which reads lazily.
_PLAIN_TIFF_MAX_BYTES = 256 * 2**20
_TIFF_TAGS = {"width": 256, "height": 257, "bits": 258, "compression": 259, "photometric": 262, "offsets": 273,
              "samples": 277, "counts": 279, "planar": 284, "tile_width": 322, "sample_format": 339}


def _plain_tiff(path: str | os.PathLike) -> np.ndarray | None:
    """The frame of a *plain* TIFF: classic (not BigTIFF), one page, uncompressed, one uint8 or uint16 sample per
    pixel (min-is-black), strips end to end; what microscopes and tifffile write for a frame. One read of the file
    and a few struct reads, holding the GIL for microseconds where tifffile's general reader takes ~0.3 ms of
    Python a frame (measured: 0.45 ms against 0.13 ms for the bare read of a 1104^2 frame). None for any other
    TIFF: tifffile reads those."""
    with _open(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if not 8 <= size <= _PLAIN_TIFF_MAX_BYTES:
            return None
        data = np.empty(size, np.uint8)
        if fh.readinto(data) != size:
            return None
    buf = data.data
    order = {b"II": "<", b"MM": ">"}.get(bytes(buf[:2]))
    if order is None or struct.unpack_from(order + "H", buf, 2)[0] != 42:
        return None
    tags = _tiff_tags(buf, order, struct.unpack_from(order + "I", buf, 4)[0], size)
    if tags is None:
        return None

    def tag(name: str, default: int | None = None) -> int | None:
        values = tags.get(_TIFF_TAGS[name], (default,))
        return values[0] if values and len(set(values)) == 1 else None  # one value (bits: one per sample)

    bits, width, height = tag("bits", 1), tag("width"), tag("height")
    offsets, counts = tags.get(_TIFF_TAGS["offsets"]), tags.get(_TIFF_TAGS["counts"])
    plain = (bits in (8, 16) and width and height and offsets and counts and len(offsets) == len(counts)
             and tag("compression", 1) == 1 and tag("samples", 1) == 1 and tag("photometric", 1) == 1
             and tag("sample_format", 1) == 1 and tag("planar", 1) == 1 and _TIFF_TAGS["tile_width"] not in tags)
    if not plain:
        return None
    nbytes = width * height * bits // 8
    if sum(counts) != nbytes or offsets[0] + nbytes > size \
            or any(offsets[i + 1] != offsets[i] + counts[i] for i in range(len(offsets) - 1)):
        return None
    dtype = np.dtype(order + ("u1" if bits == 8 else "u2"))
    pixels = data[offsets[0]:offsets[0] + nbytes]
    if offsets[0] % dtype.itemsize:  # an odd offset: aligned copy (the kernels want aligned arrays)
        pixels = pixels.copy()
    return pixels.view(dtype).reshape(height, width).astype(dtype.newbyteorder("="), copy=False)


def _tiff_tags(buf: memoryview, order: str, ifd: int, size: int) -> dict[int, tuple] | None:
    """The SHORT and LONG tags of a single-page TIFF's first IFD (other types: empty); None when the file has more
    pages or an IFD that runs past its end."""
    if ifd + 2 > size:
        return None
    n = struct.unpack_from(order + "H", buf, ifd)[0]
    end = ifd + 2 + 12 * n
    if end + 4 > size or struct.unpack_from(order + "I", buf, end)[0] != 0:  # a next page: tifffile decides
        return None
    tags = {}
    for entry in range(ifd + 2, end, 12):
        code, kind, count = struct.unpack_from(order + "HHI", buf, entry)
        if kind not in (3, 4):  # SHORT, LONG
            tags[code] = ()
            continue
        width = 2 if kind == 3 else 4
        pos = entry + 8 if count * width <= 4 else struct.unpack_from(order + "I", buf, entry + 8)[0]
        if pos + count * width > size:
            return None
        tags[code] = struct.unpack_from(f"{order}{count}{'H' if kind == 3 else 'I'}", buf, pos)
    return tags


def _read_tiff(path: str | os.PathLike, out: np.ndarray | None, suffix: str) -> np.ndarray:
    image = _plain_tiff(path)
    if image is not None:
        return _fill(image, out, path)
    with _open(path) as fh:
        head = fh.read(len(_PNG_SIGNATURE))
    if _file_format(head, path, suffix) == "png":
        return _read_png(path, out, suffix)
    return _read_tifffile(path, out)


def _read_png(path: str | os.PathLike, out: np.ndarray | None, suffix: str) -> np.ndarray:
    data = _read_bytes(path)
    if _file_format(data[: len(_PNG_SIGNATURE)], path, suffix) == "tiff":
        return _read_tifffile(path, out)
    _check_png_header(data, path)
    return _fill(_single_channel(imagecodecs.png_decode(data), path), out, path)


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


def _check_png_header(data: bytes, path: str | os.PathLike) -> None:
    """Check a PNG's IHDR chunk (the first, right after the signature) and refuse a claim its file cannot hold."""
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise FrameReadError(f"{path}: cannot decode PNG file: no IHDR chunk after the signature (truncated?)")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    samples, depths = _PNG_COLOUR_TYPES.get(colour, (0, ()))
    if not (0 < width < 2**31 and 0 < height < 2**31) or depth not in depths:
        raise FrameReadError(
            f"{path}: invalid PNG header (width {width}, height {height}, bit depth {depth}, colour type {colour})"
        )
    what = f"{width}x{height} pixels (width x height), {samples} sample(s) of {depth} bits"
    _check_claim(path, what, width * height * (4 if colour == 3 else samples) * (2 if depth == 16 else 1))
    # the zlib stream inflates to the pixels at their stored depth (plus a filter byte a row): at most 1032:1
    _check_claim(path, what, height * ((width * samples * depth + 7) // 8), len(data), _MAX_DEFLATE_RATIO)


def _read_tifffile(path: str | os.PathLike, out: np.ndarray | None) -> np.ndarray:
    try:
        tif = tifffile.TiffFile(path)
    except FileNotFoundError:
        raise FrameReadError(f"{path}: file not found") from None
    with tif:
        page = tif.pages.first
        stacked = sum(1 for p in tif.pages[1:] if p.shape == page.shape) if len(tif.pages) > 1 else 0
        if stacked:
            raise FrameReadError(f"{path}: a stack of {stacked + 1} frames; nucleiscreen reads one frame per file")
        _check_tiff_page(page, tif.filehandle.size, path)
        if (
            out is not None
            and page.is_contiguous
            and page.shape == out.shape
            and page.dtype == out.dtype
            and out.flags.c_contiguous
        ):
            return page.asarray(out=out)
        image = page.asarray()
        if image.ndim == 3 and page.axes.startswith("S"):  # planar RGB: samples first
            image = np.moveaxis(image, 0, -1)
    if image.dtype.kind == "f" and image.dtype != np.float32:
        image = image.astype(np.float32)
    return _fill(_single_channel(image, path), out, path)


def _check_tiff_page(page: tifffile.TiffPage, size: int, path: str | os.PathLike) -> None:
    """Refuse a page whose pixels the file cannot hold, before tifffile allocates them (module docstring)."""
    if page.dtype is None:
        return  # an unsupported pixel type: tifffile says so
    what = (f"{page.imagewidth}x{page.imagelength} pixels (width x height), {page.samplesperpixel} sample(s) of "
            f"{page.dtype}")
    compressed = page.compression != 1
    _check_claim(path, what, page.nbytes, size, _MAX_TIFF_RATIO if compressed else 1)
    needed, listed = math.prod(page.chunked), len(page.dataoffsets)
    if listed < needed:  # tifffile would fill the missing ones with zeros
        raise FrameReadError(
            f"{path}: truncated or corrupt, {what} need {needed} strips or tiles, the file lists {listed}"
        )
    if any(offset + count > size for offset, count in zip(page.dataoffsets, page.databytecounts)):
        raise FrameReadError(f"{path}: truncated, the pixel data runs past the end of the file ({size} bytes)")


def _check_claim(path: str | os.PathLike, what: str, nbytes: int, available: int | None = None, ratio: int = 1) -> None:
    """Refuse a header whose ``nbytes`` of pixels (``what``) exceed ``MAX_FRAME_BYTES`` or, when ``available`` is
    given, ``available`` bytes of file at ``ratio``:1 compression (1: uncompressed)."""
    if nbytes > MAX_FRAME_BYTES:
        raise FrameReadError(
            f"{path}: the header claims {what}, {nbytes} bytes of pixels, more than nucleiscreen reads "
            f"({MAX_FRAME_BYTES}); a corrupt header"
        )
    if available is not None and nbytes > available * ratio:
        how = f" even at {ratio}:1 compression" if ratio > 1 else ""
        raise FrameReadError(
            f"{path}: truncated or corrupt, the header claims {what}, {nbytes} bytes of pixels, more than "
            f"{available} bytes of file hold{how}"
        )


def _single_channel(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Return a 2-D image; a (rows, columns, samples) image with equal colour channels gives one."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and 2 <= image.shape[-1] <= 4:
        colours = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]  # drop alpha
        first, nan = colours[..., 0], colours.dtype.kind in "fc"  # (NaN pixels: equal when NaN in every channel)
        if all(np.array_equal(first, colours[..., k], equal_nan=nan) for k in range(1, colours.shape[-1])):
            return np.ascontiguousarray(first)
        raise FrameReadError(
            f"{path}: {colours.shape[-1]} different colour channels; "
            "nucleiscreen needs one grey-level (Hoechst) channel per file"
        )
    raise FrameReadError(f"{path}: an image of shape {image.shape} is not one 2-D frame")


def _fill(image: np.ndarray, out: np.ndarray | None, path: str | os.PathLike) -> np.ndarray:
    """Copy ``image`` into ``out`` when given (checking shape and a safe cast), else return it."""
    if out is None:
        return image
    if out.shape != image.shape:
        raise FrameReadError(
            f"{path}: the frame is {image.shape[0]}x{image.shape[1]} pixels (rows x columns), "
            f"the buffer {out.shape[0]}x{out.shape[1]}"
        )
    if not np.can_cast(image.dtype, out.dtype, "safe"):
        raise FrameReadError(f"{path}: {image.dtype} pixels do not fit a {out.dtype} buffer")
    np.copyto(out, image)
    return out


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


def _read_bytes(path: str | os.PathLike) -> bytes:
    with _open(path) as fh:
        return fh.read()


def _open(path: str | os.PathLike):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FrameReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FrameReadError(f"{path}: a folder, not an image file") from None
    except OSError as exc:
        raise FrameReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
