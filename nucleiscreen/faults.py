"""Faulty frames planted in a simulated screen: the catalogue of bad input the reliability test and benchmark check.

Each ``Fault`` turns a good frame (the simulator's uint16 frame at that position) into the bytes of a bad file of the
same name, and says what the engine must do with it: record it in the error table at ``stage`` with a reason that
contains ``reason``, or segment it (``stage`` None: an 8-bit frame, an RGB frame whose channels are equal, a partly
saturated frame are real frames). ``plant_faults`` writes one of each into a screen's frames.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

__all__ = ["C01_FAULTS", "TIFF_FAULTS", "Fault", "plant_faults"]


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[np.ndarray], bytes]  # the good frame -> the bad file's bytes
    stage: str | None  # "decode" or "check": the error table's Stage; None: the frame is segmented
    reason: str  # words of the error's reason, after the file's name (case-insensitive)


def _tiff(image: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, **options)
    return buf.getvalue()


def _huge_tiff(good: np.ndarray) -> bytes:
    """A 4x4 TIFF whose header is patched to claim 100,000 x 100,000 pixels."""
    data = bytearray(_tiff(np.zeros((4, 4), np.uint16)))
    page = tifffile.TiffFile(io.BytesIO(bytes(data))).pages[0]
    for tag in (page.tags["ImageWidth"], page.tags["ImageLength"]):
        fmt = "<H" if tag.dtype == 3 else "<I"  # SHORT or LONG, stored in the entry's value field
        struct.pack_into(fmt, data, tag.valueoffset, 100_000 if fmt == "<I" else 65_535)
    return bytes(data)


def _eight_bit(good: np.ndarray) -> np.ndarray:
    """The frame scaled to 8 bits, as a conversion for a figure would (dim frames would not survive ``>> 8``)."""
    return (good.astype(np.float64) * (255 / max(1, int(good.max())))).astype(np.uint8)


def _float_with(value: float) -> Callable[[np.ndarray], bytes]:
    def make(good: np.ndarray) -> bytes:
        image = good.astype(np.float32) / 65535
        image.flat[:: max(1, image.size // 7)] = value
        return _tiff(image)
    return make


def _partly_saturated(good: np.ndarray) -> bytes:
    image = good.copy()
    image[: image.shape[0] // 5] = 65535  # a fifth of the frame at the maximum: segmented, its PercentMaximal tells
    return _tiff(image)


def _other_size(good: np.ndarray) -> bytes:
    return _tiff(np.ascontiguousarray(good[: good.shape[0] * 3 // 4, : good.shape[1] * 3 // 4]))


TIFF_FAULTS = (
    Fault("zero-byte", lambda good: b"", "decode", "empty"),
    Fault("truncated", lambda good: _tiff(good)[: good.nbytes // 2], "decode", "truncated"),
    Fault("random bytes", lambda good: np.random.default_rng(1).bytes(4096), "decode", "not a TIF"),
    Fault("PNG named .tif", lambda good: imagecodecs.png_encode(good), None, ""),
    Fault("JPEG named .tif", lambda good: imagecodecs.jpeg8_encode(_eight_bit(good)), "decode", "JPEG"),
    Fault("8-bit", lambda good: _tiff(_eight_bit(good)), None, ""),
    Fault("RGB, equal channels", lambda good: _tiff(np.repeat(good[..., None], 3, axis=2), photometric="rgb"),
          None, ""),
    Fault("RGB", lambda good: _tiff(np.stack([good, good // 2, good // 3], axis=2), photometric="rgb"),
          "decode", "channels"),
    Fault("3-D stack", lambda good: _tiff(np.stack([good // k for k in range(1, 6)])), "decode", "stack of 5"),
    Fault("float with NaN", _float_with(np.nan), "check", "NaN"),
    Fault("float with Inf", _float_with(np.inf), "check", "infinite"),
    Fault("all-zero", lambda good: _tiff(np.zeros_like(good)), "check", "blank"),
    Fault("saturated", lambda good: _tiff(np.full_like(good, 65535)), "check", "saturated"),
    Fault("partly saturated", _partly_saturated, None, ""),
    Fault("another size", _other_size, "check", "plate's frames"),
    Fault("huge header", _huge_tiff, "decode", "claims"),
)
"""Bad files under a ``.tif`` name, in a plate of uint16 TIFFs."""


def _c01(dib: bytes) -> bytes:
    return struct.pack(">i", 16) + zlib.compress(dib)


def _dib(good: np.ndarray, width: int | None = None, height: int | None = None, bits: int = 16) -> bytes:
    h, w = good.shape
    header = struct.pack("<iiihhiiiiii", 52, w if width is None else width, h if height is None else height, 1, bits,
                         0, good.nbytes, 0, 0, 0, 0).ljust(52, b"\0")
    return header + good.astype("<u2").tobytes()


def _corrupt_stream(good: np.ndarray) -> bytes:
    data = bytearray(_c01(_dib(good)))
    for i in range(40, min(len(data), 400), 7):  # scramble the deflate blocks after the header
        data[i] ^= 0x5A
    return bytes(data)


C01_FAULTS = (
    Fault("C01 zero-byte", lambda good: b"", "decode", "short"),
    Fault("C01 corrupt zlib stream", _corrupt_stream, "decode", "zlib"),
    Fault("C01 truncated stream", lambda good: _c01(_dib(good))[:200], "decode", "truncated"),
    Fault("C01 wrong marker", lambda good: b"\0\0\0\x07" + _c01(_dib(good))[4:], "decode", "marker"),
    Fault("C01 not zlib", lambda good: struct.pack(">i", 16) + _dib(good), "decode", "zlib"),
    Fault("C01 12 bits per pixel", lambda good: _c01(_dib(good, bits=12)), "decode", "bits"),
    Fault("C01 zero width", lambda good: _c01(_dib(good, width=0)), "decode", "header"),
    Fault("C01 huge header", lambda good: _c01(_dib(good, width=100_000, height=100_000)), "decode", "claims"),
)
"""Bad files under a ``.C01`` name, in a plate of Cellomics frames."""


def plant_faults(frames: list[Path], faults: tuple[Fault, ...], read: Callable[[Path], np.ndarray],
                 start: int = 5) -> dict[str, Fault]:
    """Overwrite frames ``start``, ``start + step``, ... of ``frames`` (a plate's, in order) with one fault each, spread
    over the plate and clear of its first frames (which give the plate's frame size); ``read`` reads a good frame.
    Returns the planted fault of each file name."""
    step = max(1, (len(frames) - start) // len(faults))
    if start + step * (len(faults) - 1) >= len(frames):
        raise ValueError(f"{len(faults)} faults need at least {start + len(faults)} frames, got {len(frames)}")
    planted = {}
    for fault, path in zip(faults, frames[start::step]):
        path.write_bytes(fault.make(read(path)))
        planted[path.name] = fault
    return planted
