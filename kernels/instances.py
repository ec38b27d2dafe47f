"""The class map -> nuclei instances (the inverse of ``classes_from_instances``).

A numba kernel (``nogil=True``, so frames can be processed on threads) behind a plain Python entry point that
validates its input. ``instances_from_classes`` turns the network's class map (0 background, 1 interior,
2 boundary) into nuclei:

1. *Seeds*: connected components of the interior pixels.
2. *Growth*: boundary pixels join a seed by a breadth-first growth through boundary pixels, in rounds: round 1 gives
   every boundary pixel next to an interior pixel to the seed of its first interior neighbour in raster order; round
   r > 1 gives the unclaimed boundary pixels next to a pixel claimed in round r - 1 to that pixel's seed (the first
   such pixel in the order of round r - 1, neighbours in raster order). So a boundary pixel goes to the seed nearest
   to it along paths of boundary pixels (geodesic distance in steps of the chosen connectivity), and two seeds never
   merge. Growth stops after ``max_grow`` rounds; boundary pixels it did not reach, and boundary blobs that touch no
   seed, become background.
3. *Holes*: a connected component of background pixels that does not touch the image edge and whose neighbours all
   belong to one object is filled with that object (background connectivity is the dual of the object connectivity:
   4 for 8-connected objects, 8 for 4-connected ones).
4. *Small objects*: objects with fewer than ``min_area`` pixels (after growth and hole filling) are dropped; they do
   not become holes of their neighbours.
5. The remaining objects are numbered 1..N in raster order of their first pixel.

For a target made by ``classes_from_instances(labels, width=2)`` most boundary pixels are within 2 steps of their
own object's interior, but the band of a thin protrusion (a ridge no deeper than the band) can be much further, so
``max_grow`` defaults to 8. On the 40 annotated frames of ``aitslab-bioimaging1`` (1,658 nuclei) the round trip
``instances_from_classes(classes_from_instances(L))`` gives F1 = 0.9994 at IoU 0.9 (1,657 nuclei back; the other, a
31-px micronucleus, loses band pixels to its neighbour) and puts 33 of ~2.5 M foreground pixels in the wrong object:
where the band of a protrusion of one nucleus lies closer to a neighbour's interior than to its own, the class map
itself does not say whose band it is.

How it is fast (the definition above is what it computes, pixel for pixel): nothing is done per pixel where a run
(a maximal stretch of a row) or a 64-pixel word will do.

- The class map is packed into bit planes (one bit per pixel) of interior and boundary pixels, 8 bytes at a time.
- Which boundary pixels the growth reaches does not depend on who claims them: it is the set within ``max_grow``
  steps of the interior, found by dilating bit planes (a round costs a few word operations per 64 pixels, and only
  rows next to the last round's pixels are touched).
- Seeds, and objects (interior plus reached boundary pixels), are labelled as runs, with union-find between runs of
  adjacent rows (``runs.py``; ``connected_components`` is the same labelling).
- An object holding one seed is that seed's, with no per-pixel work. Only in the objects holding several seeds
  (touching nuclei) does the growth run pixel by pixel, to decide who owns which boundary pixel exactly as defined;
  one object's growth does not interact with another's, so the growth order within it is the one of a growth over
  the whole frame.
- Holes: the Euler number of each object, from its runs (runs minus pairs of touching runs in adjacent rows), says
  whether it has any; only the few that do are searched (union-find over the gaps between their runs).
- The result is a list of runs per row, painted into the label image in whole 16-pixel stores
  (``nucleiscreen.kernels.measure.segment_and_measure`` measures the same runs instead of reading the labels back).
  Hot loops index arrays with uint64 (numba checks every signed index for a negative value, which costs a branch and
  keeps LLVM from vectorising); scratch buffers are kept per thread between calls.

The bit planes are ``_bits.py``'s, the runs ``runs.py``'s; the growth (step 2) is in ``_growth.py``, the holes (step
3) in ``_holes.py``, and this module puts the steps together.
"""

from __future__ import annotations

import numba
import numpy as np

from nucleiscreen.kernels._bits import _as_words, _pack_classes, _u
from nucleiscreen.kernels._growth import _contested_growth, _grow
from nucleiscreen.kernels._holes import _holes_of
from nucleiscreen.kernels._workspace import Runs, Workspace, per_thread, workspace
from nucleiscreen.kernels.runs import _check_2d, _check_connectivity, _link_row, _roots, _row_runs, paint_runs

DEFAULT_MIN_AREA = 4
DEFAULT_MAX_GROW = 8


@numba.njit(nogil=True, cache=True)
def _instance_runs(ws, eight, max_grow, min_area):
    """Steps 1-5 of the module docstring on the class map packed into ``ws.planes``; the objects as ``ws.runs``.

    ``ws.touch[y]``: whether an object of row y may touch another object (8-connected objects only touch inside a
    component that holds several seeds). Returns the number of objects.
    """
    # (fields read into locals once: read inside the loops, they would cost time, as _workspace.py says)
    h, w = ws.shape
    planes = ws.planes
    nw = planes.nw
    ip = planes.interior
    cp = planes.reached
    ix0 = ws.seeds.x0
    ix1 = ws.seeds.x1
    iparent = ws.seeds.parent
    iorun = ws.seeds.object_run
    irs = ws.seeds.starts
    ox0 = ws.objects.x0
    ox1 = ws.objects.x1
    oparent = ws.objects.parent
    orow = ws.objects.row
    opairs = ws.objects.pairs
    oi0 = ws.objects.first_seed
    osub = ws.objects.first_piece
    ors = ws.objects.starts
    sx0 = ws.pieces.x0
    sx1 = ws.pieces.x1
    sseed = ws.pieces.seed
    fx0 = ws.runs.x0
    fx1 = ws.runs.x1
    fid = ws.runs.ids
    frs = ws.runs.starts
    hy = ws.holes.y
    hx0 = ws.holes.x0
    hx1 = ws.holes.x1
    hseed = ws.holes.seed
    lab = ws.owners
    touch = ws.touch
    reach = 1 if eight else 0
    _grow(planes, h, eight, max_grow)

    # 1. Seeds: runs of interior pixels. Objects so far: runs of interior + reached boundary pixels. Each row's runs
    # are joined to the row above's as they come.
    inn = 0
    on = 0
    for y in range(h):
        base = (y + 1) * nw
        irs[y] = inn
        ors[y] = on
        i0 = inn
        inn = _row_runs(ip, ip, False, base, nw, ix0, ix1, inn)
        _link_row(ix0, ix1, irs[y - 1] if y else 0, i0, inn, reach, iparent, iparent[:0])
        o0 = on
        on = _row_runs(ip, cp, True, base, nw, ox0, ox1, on)
        _link_row(ox0, ox1, ors[y - 1] if y else 0, o0, on, reach, oparent, opairs)
        j = o0
        for i in range(i0, inn):  # the object run holding each seed run
            while ox1[_u(j)] < ix0[_u(i)]:
                j += 1
            iorun[_u(i)] = j
        for j in range(o0, on):
            orow[_u(j)] = y
    irs[h] = inn
    ors[h] = on
    i = 0
    for j in range(on):  # seed runs of object run j: oi0[j] .. oi0[j + 1] - 1
        while i < inn and iorun[_u(i)] < j:
            i += 1
        oi0[_u(j)] = i
    oi0[on] = inn
    _roots(iparent, inn)
    _roots(oparent, on)

    # Seed ids 1..S in raster order of their first interior run (iparent is reused for them: _contested_growth reads
    # them there).
    iseed = iparent
    n_seeds = 0
    for i in range(inn):
        if iparent[_u(i)] == i:
            n_seeds += 1
            iseed[_u(i)] = n_seeds
        else:
            iseed[_u(i)] = iseed[_u(iparent[_u(i)])]
    # Per object component (indexed by its root run): its seed, or -1 if it holds several.
    comp_seed = np.zeros(on, np.int32)
    for i in range(inn):
        c = _u(oparent[_u(iorun[_u(i)])])
        s = iseed[_u(i)]
        if comp_seed[c] == 0:
            comp_seed[c] = s
        elif comp_seed[c] != s:
            comp_seed[c] = -1
    contested_run = np.zeros(on, np.bool_)
    n_contested = 0
    touch[:h] = not eight
    for j in range(on):
        if comp_seed[_u(oparent[_u(j)])] < 0:
            contested_run[_u(j)] = True
            touch[_u(orow[_u(j)])] = True
            n_contested += 1

    # 2. Growth, pixel by pixel only where seeds compete.
    if n_contested:
        _contested_growth(ws.owners, ws.queue, planes, w, eight, ws.seeds, ws.objects, on, contested_run)

    # Pieces of one seed (sub-runs): one per object run, or several where seeds compete. Area and first appearance.
    area = np.zeros(n_seeds + 1, np.int64)
    order = np.empty(n_seeds, np.int32)
    n_order = 0
    ns = 0
    wp = w + 2
    for j in range(on):
        uj = _u(j)
        osub[uj] = ns
        if not contested_run[uj]:
            s = comp_seed[_u(oparent[uj])]
            sx0[_u(ns)] = ox0[uj]
            sx1[_u(ns)] = ox1[uj]
            sseed[_u(ns)] = s
            ns += 1
            if area[_u(s)] == 0:
                order[_u(n_order)] = s
                n_order += 1
            area[_u(s)] += ox1[uj] - ox0[uj] + 1
            continue
        # seed runs, and between them reached pixels cut where their owner changes
        base = (orow[uj] + 1) * wp + 1
        x = ox0[uj]
        first = ns
        for i in range(oi0[uj], oi0[j + 1] + 1):
            end = ix0[i] - 1 if i < oi0[j + 1] else ox1[uj]
            while x <= end:
                s = lab[_u(base + x)]
                lab[_u(base + x)] = 0
                x1 = x
                while x1 < end and lab[_u(base + x1 + 1)] == s:
                    x1 += 1
                    lab[_u(base + x1)] = 0
                sx0[ns] = x
                sx1[ns] = x1
                sseed[ns] = s
                ns += 1
                x = x1 + 1
            if i < oi0[j + 1]:
                sx0[ns] = ix0[i]
                sx1[ns] = ix1[i]
                sseed[ns] = iseed[i]
                ns += 1
                x = ix1[i] + 1
        for t in range(first, ns):
            s = sseed[t]
            if area[s] == 0:
                order[n_order] = s
                n_order += 1
            area[s] += sx1[t] - sx0[t] + 1
    osub[on] = ns

    # 3. Holes, only in the components whose Euler number (runs - touching pairs) says they have some.
    euler = np.zeros(on, np.int32)
    last_row = np.zeros(on, np.int32)
    for j in range(on):
        c = _u(oparent[_u(j)])
        euler[c] += 1 - opairs[_u(j)]
        last_row[c] = orow[_u(j)]
    nh = 0
    for c in range(on):
        if oparent[_u(c)] == c and euler[_u(c)] < 1:
            single = comp_seed[c] > 0
            nh = _holes_of(ws.objects, ws.pieces, ws.gaps, ws.holes, c, orow[c], last_row[c], single, 1 - reach, nh)
    if nh > 1:
        key = hy[:nh].astype(np.int64) * (w + 1) + hx0[:nh]
        idx = np.argsort(key)
        hy[:nh] = hy[idx]
        hx0[:nh] = hx0[idx]
        hx1[:nh] = hx1[idx]
        hseed[:nh] = hseed[idx]
    for t in range(nh):
        area[hseed[t]] += hx1[t] - hx0[t] + 1

    # 4. + 5. Drop small objects; number the others in raster order of their first pixel.
    new = np.zeros(n_seeds + 1, np.int32)
    m = 0
    for t in range(n_order):
        s = order[t]
        if area[s] >= min_area:
            m += 1
            new[s] = m

    # The objects' runs per row: the pieces and the holes merged in x order, touching runs of one object joined.
    nf = 0
    t = 0
    for y in range(h):
        frs[y] = nf
        row_start = nf
        a = osub[ors[y]]
        a_end = osub[ors[y + 1]]
        while a < a_end or (t < nh and hy[t] == y):
            if t < nh and hy[t] == y and (a >= a_end or hx0[t] < sx0[_u(a)]):
                x0 = hx0[t]
                x1 = hx1[t]
                k = new[hseed[t]]
                t += 1
            else:
                x0 = sx0[_u(a)]
                x1 = sx1[_u(a)]
                k = new[_u(sseed[_u(a)])]
                a += 1
            if k == 0:
                continue
            if nf > row_start and fid[_u(nf - 1)] == k and fx1[_u(nf - 1)] + 1 == x0:
                fx1[_u(nf - 1)] = x1
            else:
                fx0[_u(nf)] = x0
                fx1[_u(nf)] = x1
                fid[_u(nf)] = k
                nf += 1
    frs[h] = nf
    return m


def _packed_classes(class_map: np.ndarray, ws: Workspace) -> None:
    words, cw = _as_words(class_map)
    planes = ws.planes
    if _pack_classes(words, class_map.shape[0], cw, planes.nw, planes.interior, planes.boundary):
        raise ValueError(
            f"class_map must hold only 0 (background), 1 (interior), 2 (boundary), found {int(class_map.max())}"
        )


def instance_runs(class_map: np.ndarray, min_area: int, connectivity: int, max_grow: int) -> tuple:
    """The objects of a validated class map as runs: (x0, x1, id, row_starts, count, touch).

    Row y's runs are ``x0[row_starts[y]:row_starts[y + 1]]`` etc., in x order, maximal per object; ``touch[y]``:
    whether objects of row y may touch other objects. The arrays are this thread's workspace: use them before the
    next call on this thread.
    """
    ws = per_thread(workspace, *class_map.shape)
    _packed_classes(class_map, ws)
    n = _instance_runs(ws, connectivity == 8, int(max_grow), int(min_area))
    return ws.runs.x0, ws.runs.x1, ws.runs.ids, ws.runs.starts, n, ws.touch


def check_class_map(class_map: np.ndarray, min_area: int, connectivity: int, max_grow: int) -> None:
    """Raise ValueError unless the arguments of ``instances_from_classes`` are valid (values are checked later)."""
    _check_2d("class_map", class_map)
    if class_map.dtype != np.uint8:
        raise ValueError(f"class_map must be uint8 (0 background, 1 interior, 2 boundary), got dtype {class_map.dtype}")
    _check_connectivity(connectivity)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if max_grow < 0:
        raise ValueError(f"max_grow must be >= 0, got {max_grow}")


def instances_from_classes(
    class_map: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 8,
    max_grow: int = DEFAULT_MAX_GROW,
) -> np.ndarray:
    """Nuclei instances from a class map (0 background, 1 interior, 2 boundary).

    The inverse of ``nucleiscreen.kernels.targets.classes_from_instances``; the steps (seeds, geodesic growth of the
    seeds through boundary pixels, hole filling, small-object removal, numbering) are defined in the module
    docstring. ``nucleiscreen.kernels.measure.segment_and_measure`` does this and measures the objects in one go.

    Parameters
    ----------
    class_map : (H, W) uint8 array
        0 background, 1 nucleus interior, 2 boundary; no other values.
    min_area : int
        Objects with fewer pixels are dropped. The default (4 px) only removes specks: 11-15 % of the annotated
        objects in the real data are micronuclei and fragments under 100 px, which must be kept (the smallest
        annotated object is 6 px).
    connectivity : {4, 8}
        Connectivity of the seeds and of the growth steps.
    max_grow : int
        Number of growth rounds: a boundary pixel more than this many steps (through boundary pixels) from every
        seed stays background. 0 disables growth. The default (8) is a few pixels more than the 2-px band of the
        training target, so the band of a protrusion and a predicted band somewhat wider than the trained one are
        still absorbed, while boundary pixels far from any interior (debris, long bands between cells) are not.

    Returns
    -------
    (H, W) int32 array
        0 background, objects 1..N in raster order of their first pixel.

    Raises
    ------
    ValueError
        If ``class_map`` is not a 2-D uint8 array with values in {0, 1, 2}, or a parameter is out of range.
    """
    check_class_map(class_map, min_area, connectivity, max_grow)
    out = np.empty(class_map.shape, np.int32)
    if out.size == 0:
        return out
    x0, x1, ids, starts, _, _ = instance_runs(class_map, min_area, connectivity, max_grow)
    paint_runs(Runs(x0, x1, ids, starts), out)
    return out
