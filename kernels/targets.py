"""The 3-class training target: instance labels -> class map (0 background, 1 interior, 2 boundary).

One definition for training and inference: ``instances_from_classes`` (kernels/instances.py) inverts it.

A pixel p of object k has the *depth* d(p) = chessboard distance from p to the nearest pixel that is not k
(background or another object); pixels outside the image do not count, so an object cut by the frame edge gets no
boundary there. Then

    class(p) = 2 (boundary)  if d(p) <= width and d(p) < max depth of k
             = 1 (interior)  otherwise

i.e. the boundary is an inner band ``width`` pixels wide (the seed lab used a 2-px band) and the deepest pixels of
every object stay interior, so even a 3-px micronucleus keeps a seed. Touching nuclei are separated by 2 x width
pixels of boundary. (The seed lab drew the band outside the object, ``find_boundaries(mode='outer')``; an inner band
keeps every labelled pixel inside its own object, which makes the inverse exact.)
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _depth(labels):
    """Chessboard distance of every object pixel to the nearest pixel of another label (two-pass chamfer)."""
    h, w = labels.shape
    big = h + w
    d = np.zeros((h, w), np.int32)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k == 0:
                continue
            edge = False
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    yy = y + dy
                    xx = x + dx
                    if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] != k:
                        edge = True
            d[y, x] = 1 if edge else big
    # Forward and backward passes, propagating only between pixels of the same object: the straight chessboard
    # path to the nearest foreign pixel stays inside the object, so this equals the unrestricted distance.
    for y in range(h):
        for x in range(w):
            if d[y, x] > 1:
                k = labels[y, x]
                best = d[y, x]
                for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
                    yy = y + dy
                    xx = x + dx
                    if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] == k and d[yy, xx] + 1 < best:
                        best = d[yy, xx] + 1
                d[y, x] = best
    for y in range(h - 1, -1, -1):
        for x in range(w - 1, -1, -1):
            if d[y, x] > 1:
                k = labels[y, x]
                best = d[y, x]
                for dy, dx in ((1, 1), (1, 0), (1, -1), (0, 1)):
                    yy = y + dy
                    xx = x + dx
                    if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] == k and d[yy, xx] + 1 < best:
                        best = d[yy, xx] + 1
                d[y, x] = best
    return d


@numba.njit(nogil=True, cache=True)
def _classes(labels, depth, width, nlabels):
    h, w = labels.shape
    maxd = np.zeros(nlabels + 1, np.int32)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if depth[y, x] > maxd[k]:
                maxd[k] = depth[y, x]
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k == 0:
                continue
            dd = depth[y, x]
            out[y, x] = 2 if (dd <= width and dd < maxd[k]) else 1
    return out


def classes_from_instances(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Turn an instance label image into the 3-class target.

    Parameters
    ----------
    labels : (H, W) integer array
        0 = background, one positive id per object (ids need not be consecutive).
    width : int
        Width of the inner boundary band in pixels (chessboard distance), >= 1.

    Returns
    -------
    (H, W) uint8 class map: 0 background, 1 interior, 2 boundary (see the module docstring).
    """
    if labels.ndim != 2:
        raise ValueError(f"classes_from_instances expects a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"classes_from_instances expects integer labels, got dtype {labels.dtype}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    lab = np.ascontiguousarray(labels, dtype=np.int64 if labels.dtype == np.uint64 else None)
    nlabels = int(lab.max()) if lab.size else 0
    return _classes(lab, _depth(lab), int(width), nlabels)
