"""Step 3 of ``instances_from_classes`` (``instances.py``): the holes of an object, searched among the gaps between
its runs, become runs of that object."""

from __future__ import annotations

import numba

from nucleiscreen.kernels.runs import _find, _union

_FAR = 1 << 30  # an x beyond every image, for the open ends of the gaps of a row


@numba.njit(nogil=True, cache=True)
def _holes_of(objects, pieces, gaps, holes, c, ymin, ymax, single_seed, reach, nh):
    """Fill the holes of object component ``c`` (root run) of the ``objects`` cut into ``pieces``, rows ymin..ymax:
    append them to ``holes`` from index ``nh`` (``gaps``: scratch); returns the new count of holes.

    The gaps of each row between c's runs, and the stretches left of its first and right of its last run (outside),
    are joined with union-find to the gaps of the row above that they touch (dual connectivity: ``reach`` 0 for
    8-connected objects, 1 for 4-connected). A gap joined to no outside stretch, holding no other component's run
    (flag IMPURE) and with neighbours of one seed only, is a hole of that seed (``single_seed``: the component holds
    one seed, so every neighbour is of it).
    """
    ors = objects.starts
    oroot = objects.parent
    ox0 = objects.x0
    ox1 = objects.x1
    osub = objects.first_piece
    sx0 = pieces.x0
    sx1 = pieces.x1
    sseed = pieces.seed
    gx0 = gaps.x0
    gx1 = gaps.x1
    gparent = gaps.parent
    gown = gaps.owner
    gflag = gaps.flags
    OUT = 1
    IMPURE = 2
    ng = 0
    prev_lo = 0
    prev_hi = 0
    for y in range(ymin, ymax + 1):
        lo = ng
        last = -1
        edge = y == ymin or y == ymax
        for j in range(ors[y], ors[y + 1]):
            if oroot[j] != c:
                continue
            g = ng
            ng += 1
            gparent[g] = g
            if last < 0:
                gx0[g] = -_FAR
                gflag[g] = OUT
                gown[g] = 0
            else:
                gx0[g] = ox1[last] + 1
                gflag[g] = (OUT if edge else 0) | (IMPURE if j != last + 1 else 0)
                if single_seed:
                    gown[g] = sseed[osub[j]]
                else:
                    a = sseed[osub[last + 1] - 1]
                    b = sseed[osub[j]]
                    gown[g] = a if a == b else -1
            gx1[g] = ox0[j] - 1
            last = j
        g = ng
        ng += 1
        gparent[g] = g
        gx0[g] = ox1[last] + 1
        gx1[g] = _FAR
        gflag[g] = OUT
        gown[g] = 0
        hi = ng
        # owners above and below (only needed when the component holds several seeds)
        if not single_seed:
            for g in range(lo + 1, hi - 1):
                for yy in (y - 1, y + 1):
                    if yy < ymin or yy > ymax:
                        continue
                    for j in range(ors[yy], ors[yy + 1]):
                        if oroot[j] != c or ox1[j] < gx0[g] - reach or ox0[j] > gx1[g] + reach:
                            continue
                        for s in range(osub[j], osub[j + 1]):
                            if sx1[s] < gx0[g] - reach or sx0[s] > gx1[g] + reach:
                                continue
                            if gown[g] != sseed[s]:
                                gown[g] = -1
        # join with the touching stretches of the row above
        i = prev_lo
        k = lo
        while i < prev_hi and k < hi:
            if gx0[i] <= gx1[k] + reach and gx0[k] <= gx1[i] + reach:
                _union(gparent, i, k)
            if gx1[i] < gx1[k]:
                i += 1
            else:
                k += 1
        prev_lo = lo
        prev_hi = hi
    # fold flags and owners into the roots (gparent[g] <= g: one ascending sweep)
    for g in range(ng):
        r = _find(gparent, g)
        gparent[g] = r
        if r != g:
            gflag[r] |= gflag[g]
            if gown[g] != 0:
                if gown[r] == 0:
                    gown[r] = gown[g]
                elif gown[r] != gown[g]:
                    gown[r] = -1
    # the stretches are in row order: recover each one's row by counting the outside stretches that open a row
    y = ymin - 1
    for g in range(ng):
        if gx0[g] == -_FAR:
            y += 1
            continue
        if gx1[g] == _FAR:
            continue
        r = gparent[g]
        if gflag[r] == 0 and gown[r] > 0:
            holes.y[nh] = y
            holes.x0[nh] = gx0[g]
            holes.x1[nh] = gx1[g]
            holes.seed[nh] = gown[r]
            nh += 1
    return nh
