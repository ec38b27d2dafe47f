"""Runs (maximal horizontal stretches of one object in a row): images cut into runs and painted back, and connected
components labelled as runs.

The kernels pass objects around as runs (``_workspace.Runs``): row y's runs are ``x0[starts[y]:starts[y + 1]]``,
``x1[...]`` (inclusive) and ``ids[...]``, in x order. ``_row_runs`` cuts the rows of a bit plane into runs,
``_label_runs`` those of a label image, and ``paint_runs`` writes runs into a label image.

``connected_components`` labels the runs of foreground pixels with union-find between adjacent rows. Equivalences
are linked towards the smaller run index, so each component's root is its first run in raster order and the labels
come out in the order of ``scipy.ndimage.label``. ``instances_from_classes`` labels its seeds and objects the same
way.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from nucleiscreen.kernels._bits import (
    _LOW_BITS,
    _PACK,
    _0,
    _1,
    _56,
    _63,
    _as_words,
    _pack_nonzero,
    _pack_nonzero_bytes,
    _u,
)
from nucleiscreen.kernels._workspace import per_thread, workspace


@numba.njit(nogil=True, cache=True)
def _row_runs(a, b, use_b, base, nw, x0, x1, n):
    """Append the runs of set bits of row ``base`` of plane ``a`` (or of ``a | b``) to x0/x1 from index n.

    Returns the new count. A run ends inside the row: the last word's top bit is always clear.
    """
    carry = _0
    for k in range(nw):
        word = a[_u(base + k)]
        if use_b:
            word |= b[_u(base + k)]
        t = word ^ ((word << _1) | carry)  # bit x set: pixel x differs from pixel x - 1
        carry = word >> _63
        while t:
            bit = np.int64(trailing_zeros(t))
            t &= t - _1
            if (word >> np.uint64(bit)) & _1:
                x0[_u(n)] = 64 * k + bit
            else:
                x1[_u(n)] = 64 * k + bit - 1
                n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _find(parent, i):
    while parent[_u(i)] != i:
        parent[_u(i)] = parent[_u(parent[_u(i)])]  # path halving
        i = parent[_u(i)]
    return i


@numba.njit(nogil=True, cache=True)
def _union(parent, a, b):
    """Join the sets of a and b under the smaller root."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[_u(rb)] = ra
    elif rb < ra:
        parent[_u(ra)] = rb


@numba.njit(nogil=True, cache=True)
def _link_row(x0, x1, a, b, c, reach, parent, pairs):
    """Union-find step for the runs b..c - 1 of a row and the runs a..b - 1 of the row above: join the pairs that
    touch (overlap after widening by ``reach``; the runs of a row must be apart). The new runs start as their own
    sets; ``pairs[r]`` (if ``pairs`` is not empty) counts the runs above that run r touches."""
    count = pairs.size > 0
    for r in range(b, c):
        parent[_u(r)] = r
        if count:
            pairs[_u(r)] = 0
    i = a
    j = b
    while i < b and j < c:
        xi1 = x1[_u(i)]
        xj1 = x1[_u(j)]
        if x0[_u(i)] <= xj1 + reach and x0[_u(j)] <= xi1 + reach:
            if parent[_u(j)] == j:  # j's first link: hang it under i's root
                parent[_u(j)] = _find(parent, i)
            else:
                _union(parent, i, j)
            if count:
                pairs[_u(j)] += 1
        if xi1 < xj1:
            i += 1
        else:
            j += 1


@numba.njit(nogil=True, cache=True)
def _roots(parent, n):
    """Point every run at its root, the first run of its component (parent[r] <= r: one ascending sweep)."""
    for r in range(n):
        parent[_u(r)] = parent[_u(parent[_u(r)])]


@numba.njit(nogil=True, cache=True)
def _fill16(flat, i, end, v):
    """flat[i:end] = v in stores of 16 (may write up to 15 past ``end``: the caller rewrites those)."""
    while i < end:
        for j in range(_u(16)):
            flat[i + j] = v
        i += _u(16)


@numba.njit(nogil=True, cache=True)
def paint_runs(runs, out):
    """Write the ``Runs`` of each row into ``out`` (their ids), 0 elsewhere.

    Left to right in whole stores of 16 pixels, each stretch overwriting what the last one wrote past its end (a
    run costs a store or two instead of a loop with a remainder); the last rows, with no 16 pixels after them,
    exactly.
    """
    h, w = out.shape
    flat = out.reshape(-1)
    x0 = runs.x0
    x1 = runs.x1
    ids = runs.ids
    starts = runs.starts
    for y in range(h):
        b = y * w
        x = 0
        if b + w + 16 <= flat.size:
            for r in range(starts[y], starts[y + 1]):
                _fill16(flat, _u(b + x), _u(b + x0[r]), 0)
                _fill16(flat, _u(b + x0[r]), _u(b + x1[r] + 1), ids[r])
                x = x1[r] + 1
            _fill16(flat, _u(b + x), _u(b + w), 0)
        else:
            for r in range(starts[y], starts[y + 1]):
                flat[b + x : b + x0[r]] = 0
                flat[b + x0[r] : b + x1[r] + 1] = ids[r]
                x = x1[r] + 1
            flat[b + x : b + w] = 0


@numba.njit(nogil=True, cache=True)
def _component_runs(ip, h, nw, eight, objects, runs):
    """``runs``: the connected components of the bit plane ``ip``, numbered in raster order of their first pixel
    (labelled as ``objects``, a ``Workspace``'s)."""
    x0 = objects.x0
    x1 = objects.x1
    parent = objects.parent
    rs = objects.starts
    fx0 = runs.x0
    fx1 = runs.x1
    fid = runs.ids
    n = 0
    reach = 1 if eight else 0
    for y in range(h):
        rs[y] = n
        n = _row_runs(ip, ip, False, (y + 1) * nw, nw, x0, x1, n)
        _link_row(x0, x1, rs[y - 1] if y else 0, rs[y], n, reach, parent, parent[:0])
    rs[h] = n
    _roots(parent, n)
    m = 0
    for r in range(n):
        if parent[r] == r:
            m += 1
            fid[r] = m
        else:
            fid[r] = fid[parent[r]]
        fx0[r] = x0[r]
        fx1[r] = x1[r]
    runs.starts[: h + 1] = rs[: h + 1]
    return m


@numba.njit(nogil=True, cache=True)
def _label_runs(labels, runs):
    """Cut a label image into ``runs`` of one nonzero label per row. Returns (count, smallest label, largest label).

    Where a row changes label is marked in a byte per pixel (a loop the compiler vectorises), packed 8 to a byte and
    visited with trailing-zero counts, so long runs cost a few operations per 64 pixels.
    """
    h, w = labels.shape
    nb = (w + 64) // 64 * 8  # change bytes per row, whole words, at least one past the end
    change = np.zeros(nb * 8, np.uint8)
    change64 = change.view(np.uint64)
    bits = np.zeros(nb, np.uint8)
    bits64 = bits.view(np.uint64)
    fx0 = runs.x0
    fx1 = runs.x1
    fid = runs.ids
    frs = runs.starts
    n = 0
    lo = 0
    hi = 0
    for y in range(h):
        frs[y] = n
        row = labels[y]
        change[0] = 1
        for x in range(1, w):
            change[x] = row[x] != row[x - 1]
        change[w] = 1  # the end of the last run
        for c in range(nb):
            bits[c] = np.uint8(((change64[c] & _LOW_BITS) * _PACK) >> _56)
        start = -1
        for k in range(nb // 8):
            word = bits64[k]
            while word:
                x = 64 * k + np.int64(trailing_zeros(word))
                word &= word - _1
                if x > w:
                    break
                if start >= 0:
                    v = row[start]
                    if v != 0:
                        fx0[n] = start
                        fx1[n] = x - 1
                        fid[n] = v
                        n += 1
                        lo = min(lo, np.int64(v))
                        hi = max(hi, np.int64(v))
                start = x
    frs[h] = n
    return n, lo, hi


def _check_2d(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (H, W), got {array.ndim}-D with shape {array.shape}")


def _check_connectivity(connectivity: int) -> bool:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return connectivity == 8


def connected_components(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Label the connected components of a 2-D mask.

    Parameters
    ----------
    mask : (H, W) bool or integer array
        Nonzero pixels are foreground.
    connectivity : {4, 8}
        4: pixels sharing an edge are connected; 8: pixels sharing an edge or a corner are connected
        (``scipy.ndimage.label`` with ``structure=np.ones((3, 3))``, ``skimage.measure.label(connectivity=2)``).

    Returns
    -------
    (H, W) int32 array
        0 for background, 1..N for the components, numbered in raster order (row by row) of each component's first
        pixel, like ``scipy.ndimage.label`` and ``skimage.measure.label``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D, not bool or integer, or ``connectivity`` is not 4 or 8.
    """
    _check_2d("mask", mask)
    eight = _check_connectivity(connectivity)
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be a bool or integer array, got dtype {mask.dtype}")
    h, w = mask.shape
    out = np.empty((h, w), np.int32)
    if out.size == 0:
        return out
    ws = per_thread(workspace, h, w)
    if mask.dtype.itemsize == 1:
        words, cw = _as_words(mask.view(np.uint8))
        _pack_nonzero_bytes(words, h, cw, ws.planes.nw, ws.planes.interior)
    else:
        _pack_nonzero(mask, ws.planes.nw, ws.planes.interior)
    _component_runs(ws.planes.interior, h, ws.planes.nw, eight, ws.objects, ws.runs)
    paint_runs(ws.runs, out)
    return out
