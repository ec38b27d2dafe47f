"""Step 2 of ``instances_from_classes`` (``instances.py``): the growth of the seeds through boundary pixels.

``_grow`` finds which boundary pixels the growth reaches (on bit planes: that does not depend on who claims them),
``_contested_growth`` who owns them, pixel by pixel, in the objects that hold several seeds.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from nucleiscreen.kernels._bits import _0, _1, _63, _dilate_row, _u


@numba.njit(nogil=True, cache=True)
def _grow(planes, h, eight, max_grow):
    """``planes.reached`` = the boundary pixels within ``max_grow`` steps of an interior pixel through boundary pixels.

    Breadth-first by dilation of bit planes: the front of round r is the dilated front of round r - 1, restricted to
    boundary pixels not reached before. Only rows next to a non-empty row of the last front are dilated.
    """
    nw = planes.nw
    ip = planes.interior
    bp = planes.boundary
    cp = planes.reached
    front = planes.front
    front_rows = planes.front_rows
    d = np.empty(nw, np.uint64)
    size = (h + 2) * nw
    if max_grow < 1:
        cp[:size] = _0
        return
    # Round 1 from the interior, every row. Front 0 holds it.
    f = front[0]
    fr = front_rows[0]
    for y in range(1, h + 1):
        base = y * nw
        _dilate_row(ip, base, nw, eight, d)
        nz = _0
        for k in range(nw):
            i = _u(base + k)
            n = d[_u(k)] & bp[i]
            cp[i] = n
            f[i] = n
            nz |= n
        fr[y] = nz != _0
    cur = 0
    for _ in range(1, max_grow):
        src = front[cur]
        src_rows = front_rows[cur]
        dst = front[1 - cur]
        dst_rows = front_rows[1 - cur]
        grown = False
        for y in range(1, h + 1):
            base = y * nw
            if src_rows[y - 1] or src_rows[y] or src_rows[y + 1]:
                _dilate_row(src, base, nw, eight, d)
                nz = _0
                for k in range(nw):
                    i = _u(base + k)
                    n = d[_u(k)] & bp[i] & ~cp[i]
                    cp[i] |= n
                    dst[i] = n
                    nz |= n
                dst_rows[y] = nz != _0
                grown |= nz != _0
            elif dst_rows[y]:  # left over from two rounds ago (or the last call)
                for k in range(nw):
                    dst[_u(base + k)] = _0
                dst_rows[y] = False
        cur = 1 - cur
        if not grown:
            break


@numba.njit(nogil=True, cache=True)
def _run_at(x0, x1, r, x):
    """The run holding pixel x, searched from run r of the same row (x0, x1 sorted; such a run exists)."""
    while x1[_u(r)] < x:
        r += 1
    while x0[_u(r)] > x:
        r -= 1
    return r


# Inlined into its one caller, _instance_runs: called as a function with these groups, it left the caller 2-3 % slower
# (measured on the benchmark's dense frame, the growth itself taking as long as ever).
@numba.njit(nogil=True, cache=True, inline="always")
def _contested_growth(owners, queue, planes, w, eight, seeds, objects, on, contested):
    """Pixel-by-pixel growth in the components of the object runs 0..on - 1 that hold several seeds (``contested``
    runs); leaves the owners in ``owners`` (``Workspace``'s), the claimed pixels in ``queue``.

    Their reached boundary pixels are marked -1 and claimed in the rounds of the growth (``instances.py``'s docstring),
    in the order of a growth over the whole frame. ``seeds.parent`` holds the seed id of each seed run by now.
    """
    lab = owners
    nw = planes.nw
    ip = planes.interior
    cp = planes.reached
    ox0 = objects.x0
    ox1 = objects.x1
    orow = objects.row
    oi0 = objects.first_seed
    ix0 = seeds.x0
    ix1 = seeds.x1
    iseed = seeds.parent
    irs = seeds.starts
    wp = w + 2
    unclaimed = 0
    for j in range(on):
        if contested[j]:
            base = (orow[j] + 1) * wp + 1
            x = ox0[j]
            for i in range(oi0[j], oi0[j + 1]):
                lab[_u(base + x) : _u(base + ix0[i])] = -1
                unclaimed += ix0[i] - x
                x = ix1[i] + 1
            lab[_u(base + x) : _u(base + ox1[j] + 1)] = -1
            unclaimed += ox1[j] + 1 - x
    # Round 1: reached pixels next to an interior pixel, in raster order; each takes the seed of its first interior
    # neighbour in raster order: the neighbour from the bits of the interior plane (per word: the plane shifted
    # towards each direction), its seed from the seed runs of its row (a cursor per row, as x only grows).
    tail = 0
    all_bits = ~_0
    row = -1
    cursor = np.zeros(3, np.int64)  # a seed run of rows y - 1, y, y + 1 near the last pixel looked up
    if eight:
        dys = np.array([-1, -1, -1, 0, 0, 1, 1, 1])  # NW, N, NE, W, E, SW, S, SE
        dxs = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
    else:
        dys = np.array([-1, 0, 0, 1])  # N, W, E, S
        dxs = np.array([0, -1, 1, 0])
    for j in range(on):
        if not contested[j]:
            continue
        y = orow[j]
        if y != row:
            row = y
            cursor[0] = irs[max(y - 1, 0)]
            cursor[1] = irs[y]
            cursor[2] = irs[min(y + 1, irs.size - 2)]
        base = (y + 1) * wp + 1
        pb = (y + 1) * nw
        for k in range(ox0[j] >> 6, (ox1[j] >> 6) + 1):
            lo = max(ox0[j] - 64 * k, 0)
            hi = min(ox1[j] - 64 * k, 63)
            word = cp[_u(pb + k)] & (all_bits >> np.uint64(63 - hi)) & (all_bits << np.uint64(lo))
            if not word:
                continue
            # interior bits of the neighbours in each direction at each bit position; words k - 1 and k + 1 may be
            # the neighbouring rows': their bits that shift in land on always-zero columns
            i = _u(pb + k)
            iu = i - _u(nw)
            idn = i + _u(nw)
            u = ip[iu]
            m = ip[i]
            d = ip[idn]
            west_m = (m << _1) | (ip[i - _1] >> _63)
            east_m = (m >> _1) | (ip[i + _1] << _63)
            if eight:
                west_u = (u << _1) | (ip[max(iu, _1) - _1] >> _63)  # (iu = 0: the zero row above row 0)
                east_u = (u >> _1) | (ip[iu + _1] << _63)
                west_d = (d << _1) | (ip[idn - _1] >> _63)
                east_d = (d >> _1) | (ip[idn + _1] << _63)
                word &= west_u | u | east_u | west_m | east_m | west_d | d | east_d
            else:
                word &= u | west_m | east_m | d
            while word:
                b = trailing_zeros(word)
                word &= word - _1
                x = 64 * k + np.int64(b)
                if eight:
                    code = (
                        (west_u >> b) & _1
                        | ((u >> b) & _1) << _1
                        | ((east_u >> b) & _1) << np.uint64(2)
                        | ((west_m >> b) & _1) << np.uint64(3)
                        | ((east_m >> b) & _1) << np.uint64(4)
                        | ((west_d >> b) & _1) << np.uint64(5)
                        | ((d >> b) & _1) << np.uint64(6)
                    )
                    code |= _1 << np.uint64(7)  # SE, if none before it
                else:
                    code = (u >> b) & _1 | ((west_m >> b) & _1) << _1 | ((east_m >> b) & _1) << np.uint64(2)
                    code |= _1 << np.uint64(3)
                first = _u(trailing_zeros(code))  # the first interior neighbour in raster order
                r = _u(dys[first] + 1)
                cursor[r] = _run_at(ix0, ix1, cursor[r], x + dxs[first])
                p = base + x
                lab[_u(p)] = iseed[_u(cursor[r])]
                queue[_u(tail)] = p
                tail += 1
    # Rounds 2..: the queue in order, each pixel claiming its unclaimed reached neighbours in raster order.
    if eight:
        offsets = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1])
    else:
        offsets = np.array([-wp, -1, 1, wp])
    unclaimed -= tail
    head = 0
    while unclaimed > 0 and head < tail:  # (once all are claimed, the rest of the queue would find nothing)
        p = queue[_u(head)]
        head += 1
        s = lab[_u(p)]
        for o in offsets:
            q = p + o
            if lab[_u(q)] == -1:
                lab[_u(q)] = s
                queue[_u(tail)] = q
                tail += 1
                unclaimed -= 1
