"""PNG frames, decoded by ``imagecodecs.png_decode`` once their IHDR header is checked: its claim must fit the file's
size at 1032:1, the most deflate inflates (:mod:`~nucleiscreen.engine.readers.checks`)."""

from __future__ import annotations

import os
import struct

import imagecodecs
import numpy as np

from nucleiscreen.engine.readers.checks import _MAX_DEFLATE_RATIO, FrameReadError, _check_claim, _single_channel

# PNG colour type: (samples per pixel, allowed bit depths); palette images decode to RGB(A), 4 samples at most
_PNG_COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}


def _decode_png(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """The 2-D frame of the PNG file ``data`` (its bytes), the header checked before the pixels are inflated."""
    _check_png_header(data, path)
    return _single_channel(imagecodecs.png_decode(data), path)


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
