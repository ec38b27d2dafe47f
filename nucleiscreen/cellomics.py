"""The Cellomics ``.C01`` / ``.DIB`` file format of the CellInsight CX7: its header, and :func:`write_c01`.

The Cellomics layout follows Bio-Formats' ``CellomicsReader``. A ``.DIB`` file is a 52-byte
little-endian header followed by the pixels; a ``.C01`` file is a 4-byte marker (the integer 16,
big-endian) followed by one zlib stream that inflates to a ``.DIB``::

    offset  type   field
     0      int32  (skipped; written as the header length, 52)
     4      int32  width
     8      int32  height
    12      int16  planes
    14      int16  bits per pixel (8, 16 or 32)
    16      int32  compression (0: none)
    20      int32  (skipped; written as the pixel data length)
    24      int32  pixels per metre, x
    28      int32  pixels per metre, y
    32      int32  colours used
    36      int32  colours important
    52      pixels: plane after plane, row after row, width * height * bits / 8 bytes per plane

The engine decodes these files (:mod:`nucleiscreen.engine.readers`, which checks every claim of a header against the
file); the format and the writer sit below the engine so that the simulator, beneath it, writes them too.
"""

from __future__ import annotations

import os
import struct

import imagecodecs
import numpy as np

C01_MARKER = 16
HEADER_BYTES = 52
HEADER_FIELDS = struct.Struct("<4xiihhi4xiiii")  # the 40 bytes of fields in the table above


def write_c01(
    path: str | os.PathLike,
    image: np.ndarray,
    pixel_size_um: float | None = None,
    level: int = 1,
) -> None:
    """Write a 2-D uint8 or uint16 image as a single-plane Cellomics ``.C01`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write; the file is replaced.
    image : numpy.ndarray
        2-D (rows x columns) uint8 or uint16 array.
    pixel_size_um : float, optional
        Pixel size in µm; stored as pixels per metre ``round(1e6 / pixel_size_um)`` on both axes.
        0 (unknown) when not given.
    level : int
        zlib compression level, 0-9 (9 is the Deflate maximum). 1 by default: it writes several
        times faster than 6 and the files are only ~1 % larger on microscope frames.

    Raises
    ------
    ValueError
        ``image`` is not 2-D uint8/uint16, or ``pixel_size_um`` is not positive.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_c01 needs a 2-D uint8 or uint16 image, got {image.dtype} {image.shape}")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    height, width = image.shape
    bits = image.dtype.itemsize * 8
    per_metre = 0 if pixel_size_um is None else round(1e6 / pixel_size_um)
    fields = HEADER_FIELDS.pack(width, height, 1, bits, 0, per_metre, per_metre, 0, 0)
    header = bytearray(HEADER_BYTES)
    header[: HEADER_FIELDS.size] = fields
    struct.pack_into("<i", header, 0, HEADER_BYTES)
    struct.pack_into("<i", header, 20, image.nbytes)
    pixels = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    # imagecodecs' deflate_encode writes a standard zlib stream through libdeflate, ~2x faster than zlib.
    stream = imagecodecs.deflate_encode(bytes(header) + pixels.tobytes(), level=level)
    with open(path, "wb") as fh:
        fh.write(C01_MARKER.to_bytes(4, "big"))
        fh.write(stream)
