"""What every frame format's reader shares: :class:`FrameReadError`, the checks of a header's claims, opening a file,
and the checks on a decoded frame (one 2-D grey-level channel, fitting the caller's buffer).

What a header claims is checked before any pixel buffer is allocated, so a corrupt header fails its frame instead of
stopping the run with a MemoryError (or, worse, yielding a frame of the wrong shape). The rules every format keeps:

- a frame of more than ``MAX_FRAME_BYTES`` (2 GiB) of pixels is refused whatever the file's size;
- uncompressed pixels (TIFF, DIB) must lie inside the file; compressed ones must fit the file's size times the most
  their codec can inflate: 1032:1 for deflate (C01, PNG), 65536:1 for any TIFF codec (see
  :mod:`~nucleiscreen.engine.readers.tiff`).

Each format's module adds its own (TIFF strips and tiles, the Cellomics marker and pixel length).
"""

from __future__ import annotations

import os

import numpy as np

MAX_FRAME_BYTES = 2**31
"""The most pixel data one file may decode to (a CX7 frame is 8 MiB); a header that claims more is refused."""

# The most a codec inflates its input, so a header that claims more pixels than file size x ratio is corrupt (and must
# not make us allocate gigabytes). Deflate (C01, PNG): 1032:1.
_MAX_DEFLATE_RATIO = 1032


class FrameReadError(ValueError):
    """A frame that cannot be decoded: missing, corrupt, truncated, or not a single-channel image.

    The message is one line that starts with the file's path and says what is wrong with it.
    """


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
