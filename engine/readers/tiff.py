"""TIFF frames: plain frames by the engine's own reader (:func:`_plain_tiff`), every other TIFF by tifffile
(compressed ones through imagecodecs).

Besides the claims every format's header is held to (:mod:`~nucleiscreen.engine.readers.checks`), a TIFF must list
every strip or tile its shape needs (tifffile would fill missing ones with zeros), and its compressed pixels must fit
the file's size at 65536:1, the most any TIFF codec inflates.
"""

from __future__ import annotations

import logging
import math
import os
import struct

import numpy as np
import tifffile

from nucleiscreen.engine.readers.checks import FrameReadError, _check_claim, _fill, _open, _single_channel

# tifffile logs what it finds wrong in a header (ERROR lines in the middle of a progress bar); the engine reports a
# bad frame itself, as one row of the error table, so tifffile's own log lines are dropped.
logging.getLogger("tifffile").addFilter(lambda record: False)

# The most a TIFF codec inflates its input: deflate 1032:1; LZW under 4096:1 (a 9-12 bit code stands for at most 4096
# bytes); PackBits 64:1; zstd 32768:1 (an RLE block: a 3-byte header and 1 byte for 128 KiB). Measured on a blank
# 2048^2 uint16 frame in one strip: zstd -19 15,900:1, LZMA 5,200:1.
_MAX_TIFF_RATIO = 2**16

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
