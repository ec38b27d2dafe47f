"""Image resizing for running a model at its own pixel size (``--pixel-size``): bilinear for intensities, nearest
for class maps. Pixel centres are aligned (like OpenCV's INTER_LINEAR and ``align_corners=False``)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _bilinear(img, out):
    h, w = img.shape
    oh, ow = out.shape
    sy, sx = h / oh, w / ow
    for y in range(oh):
        fy = min(max((y + 0.5) * sy - 0.5, 0.0), h - 1.0)
        y0 = int(fy)
        y1 = min(y0 + 1, h - 1)
        ty = fy - y0
        for x in range(ow):
            fx = min(max((x + 0.5) * sx - 0.5, 0.0), w - 1.0)
            x0 = int(fx)
            x1 = min(x0 + 1, w - 1)
            tx = fx - x0
            top = img[y0, x0] * (1 - tx) + img[y0, x1] * tx
            bottom = img[y1, x0] * (1 - tx) + img[y1, x1] * tx
            out[y, x] = top * (1 - ty) + bottom * ty


@numba.njit(nogil=True, cache=True)
def _nearest(img, out):
    h, w = img.shape
    oh, ow = out.shape
    for y in range(oh):
        yy = min(int((y + 0.5) * h / oh), h - 1)
        for x in range(ow):
            out[y, x] = img[yy, min(int((x + 0.5) * w / ow), w - 1)]


def resize(image: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D array to ``shape``: bilinear (float32 result) or, with ``nearest``, nearest-neighbour (same
    dtype; for class maps and labels)."""
    if image.ndim != 2:
        raise ValueError(f"resize expects a 2-D array, got shape {image.shape}")
    if nearest:
        out = np.empty(shape, image.dtype)
        _nearest(np.ascontiguousarray(image), out)
    else:
        out = np.empty(shape, np.float32)
        _bilinear(np.ascontiguousarray(image, np.float32), out)
    return out
