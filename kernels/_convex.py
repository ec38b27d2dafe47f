"""Convex areas for ``AreaShape_ConvexArea`` and ``AreaShape_Solidity`` (``measure.py``): the pixels of each object's
convex hull, counted exactly in integers."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _side(lx, ly, m, sign, chain):
    """Andrew's monotone chain over points (lx, ly), i = 0..m-1, in increasing y: the indices of the hull's left side
    (``sign`` 1) or right side (``sign`` -1) into ``chain``; it runs from the first point to the last."""
    c = 0
    for i in range(m):
        while c >= 2:
            a = chain[c - 2]
            b = chain[c - 1]
            # > 0: b is strictly left of the segment a -> i (x as a function of y)
            cross = (lx[i] - lx[a]) * (ly[b] - ly[a]) - (lx[b] - lx[a]) * (ly[i] - ly[a])
            if sign * cross > 0:
                break
            c -= 1
        chain[c] = i
        c += 1


@numba.njit(nogil=True, cache=True)
def _convex_areas(runs, n, h):
    """Pixels of the convex hull of each object 1..n of ``runs`` (``convex_hull_image`` with offset coordinates;
    ``measure.py``'s docstring).

    Coordinates are doubled so that every diamond corner is an integer point (X, Y) = (2x +- 1, 2y) or (2x, 2y +- 1).
    Each level Y of the corners contributes its leftmost and rightmost corner; the hull's left side is the convex
    chain of the leftmost ones, its right side that of the rightmost ones, and the pixel centres (2x, 2y) between the
    two sides are counted row by row, exactly, as fractions.
    """
    fx0 = runs.x0
    fx1 = runs.x1
    fid = runs.ids
    frs = runs.starts
    # per object: its runs in row order (a counting sort of the runs by object)
    count = np.zeros(n + 2, np.int64)
    for r in range(frs[h]):
        count[fid[r] + 1] += 1
    start = np.cumsum(count)
    pos = start.copy()
    order = np.empty(frs[h], np.int64)
    rows = np.empty(frs[h], np.int64)
    for y in range(h):
        for r in range(frs[y], frs[y + 1]):
            k = fid[r]
            order[pos[k]] = r
            rows[pos[k]] = y
            pos[k] += 1
    size = 3 * h + 1  # levels of one object: at most 3 per row
    ly = np.empty(size, np.int64)
    lx = np.empty(size, np.int64)  # leftmost corner of each level
    rx = np.empty(size, np.int64)  # rightmost
    left = np.empty(size, np.int64)
    right = np.empty(size, np.int64)
    convex = np.zeros(n + 1, np.int64)
    for k in range(1, n + 1):
        t = start[k]
        end = start[k + 1]
        m = 0
        while t < end:
            y = rows[t]
            lo = fx0[order[t]]
            hi = fx1[order[t]]
            while t + 1 < end and rows[t + 1] == y:
                t += 1
                lo = min(lo, fx0[order[t]])
                hi = max(hi, fx1[order[t]])
            t += 1
            # levels 2y - 1 (shared with the row above's bottom), 2y, 2y + 1
            if m > 0 and ly[m - 1] == 2 * y - 1:
                lx[m - 1] = min(lx[m - 1], 2 * lo)
                rx[m - 1] = max(rx[m - 1], 2 * hi)
            else:
                ly[m], lx[m], rx[m] = 2 * y - 1, 2 * lo, 2 * hi
                m += 1
            ly[m], lx[m], rx[m] = 2 * y, 2 * lo - 1, 2 * hi + 1
            ly[m + 1], lx[m + 1], rx[m + 1] = 2 * y + 1, 2 * lo, 2 * hi
            m += 2
        if m == 0:
            continue
        _side(lx, ly, m, 1, left)
        _side(rx, ly, m, -1, right)
        # pixel centres between the sides at each Y = 2y (the end levels are odd: no side is horizontal there)
        total = 0
        il = 0
        ir = 0
        for y in range((ly[0] + 1) // 2, (ly[m - 1] - 1) // 2 + 1):
            Y = 2 * y
            while ly[left[il + 1]] < Y:
                il += 1
            while ly[right[ir + 1]] < Y:
                ir += 1
            a = left[il]
            b = left[il + 1]
            den_l = ly[b] - ly[a]
            num_l = lx[a] * den_l + (lx[b] - lx[a]) * (Y - ly[a])  # X of the left side, times den_l
            a = right[ir]
            b = right[ir + 1]
            den_r = ly[b] - ly[a]
            num_r = rx[a] * den_r + (rx[b] - rx[a]) * (Y - ly[a])
            first = -((-num_l) // (2 * den_l))  # ceil(X_left / 2)
            last = num_r // (2 * den_r)  # floor(X_right / 2)
            if last >= first:
                total += last - first + 1
        convex[k] = total
    return convex
