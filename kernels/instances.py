"""Connected components, and the class map -> nuclei instances (the inverse of ``classes_from_instances``).

Both are numba kernels (``nogil=True``, so frames can be processed on threads) behind plain Python entry points that
validate their input.

``connected_components`` is a two-pass union-find labelling with the decision tree of Wu, Otoo & Suzuki (2009): a
pixel whose north neighbour is foreground copies its label and needs no union, which is most foreground pixels.
Equivalences are linked towards the smaller provisional label, so every component's root is the provisional label of
its first pixel in raster order and the final labels come out in the order of ``scipy.ndimage.label``.

``instances_from_classes`` turns the network's class map (0 background, 1 interior, 2 boundary) into nuclei:

1. *Seeds*: connected components of the interior pixels.
2. *Growth*: boundary pixels join a seed by a breadth-first growth through boundary pixels, in rounds: round r claims
   the unclaimed boundary pixels adjacent to a pixel claimed in round r - 1 (round 0 = the seeds), so a boundary pixel
   goes to the seed nearest to it along paths of boundary pixels (geodesic distance in steps of the chosen
   connectivity). Ties go to the seed that reaches the pixel first in the processing order (round 1 in raster order,
   later rounds in the order of the previous round). Two seeds never merge. Growth stops after ``max_grow`` rounds;
   boundary pixels it did not reach, and boundary blobs that touch no seed, become background.
3. *Holes*: a connected component of background pixels that does not touch the image edge and whose neighbours all
   belong to one object is filled with that object (background connectivity is the dual of the object connectivity:
   4 for 8-connected objects, 8 for 4-connected ones).
4. *Small objects*: objects with fewer than ``min_area`` pixels (after growth and hole filling) are dropped; they do
   not become holes of their neighbours.
5. The remaining objects are numbered 1..N in raster order of their first pixel.

For a target made by ``classes_from_instances(labels, width)`` every boundary pixel is within ``width`` steps of its
own object's interior along its own band, except at thin protrusions (ridges no deeper than ``width``), so
``max_grow`` defaults to a few pixels more than the 2-px band the trainer uses.
"""

from __future__ import annotations

import numba
import numpy as np

# Neighbour offsets: the 4-neighbours first, so 4-connectivity uses the first four entries.
_DY = np.array([-1, 0, 0, 1, -1, -1, 1, 1], np.int64)
_DX = np.array([0, -1, 1, 0, -1, 1, -1, 1], np.int64)

INTERIOR = 1
BOUNDARY = 2

DEFAULT_MIN_AREA = 4
DEFAULT_MAX_GROW = 8


@numba.njit(nogil=True, cache=True, inline="always")
def _find(parent, i):
    # Path halving.
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(nogil=True, cache=True, inline="always")
def _union(parent, a, b):
    """Join the sets of a and b; the smaller root becomes the root. Returns the root."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
        return ra
    if rb < ra:
        parent[ra] = rb
        return rb
    return ra


@numba.njit(nogil=True, cache=True)
def _label_provisional(image, value, eight, out, parent, count):
    """First pass: provisional labels of the pixels equal to ``value`` into ``out`` (0 elsewhere).

    ``parent`` receives the union-find forest, ``count[l]`` the number of pixels given provisional label l.
    Returns the number of provisional labels.
    """
    h, w = image.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if image[y, x] != value:
                out[y, x] = 0
                continue
            up = y > 0
            n_fg = up and image[y - 1, x] == value
            w_fg = x > 0 and image[y, x - 1] == value
            if eight:
                if n_fg:
                    lab = out[y - 1, x]
                else:
                    ne_fg = up and x + 1 < w and image[y - 1, x + 1] == value
                    if w_fg:
                        lab = out[y, x - 1]
                        if ne_fg:
                            _union(parent, lab, out[y - 1, x + 1])
                    elif up and x > 0 and image[y - 1, x - 1] == value:
                        lab = out[y - 1, x - 1]
                        if ne_fg:
                            _union(parent, lab, out[y - 1, x + 1])
                    elif ne_fg:
                        lab = out[y - 1, x + 1]
                    else:
                        n += 1
                        parent[n] = n
                        count[n] = 0
                        lab = n
            else:
                if n_fg:
                    lab = out[y - 1, x]
                    if w_fg:
                        _union(parent, lab, out[y, x - 1])
                elif w_fg:
                    lab = out[y, x - 1]
                else:
                    n += 1
                    parent[n] = n
                    count[n] = 0
                    lab = n
            out[y, x] = lab
            count[lab] += 1
    return n


@numba.njit(nogil=True, cache=True)
def _resolve(parent, n):
    """Map provisional labels 1..n to final labels 1..m (m = number of sets) in order of their roots."""
    lut = np.empty(n + 1, np.int32)
    lut[0] = 0
    m = 0
    for i in range(1, n + 1):
        r = _find(parent, i)
        if r == i:
            m += 1
            lut[i] = m
        else:
            lut[i] = lut[r]  # r < i: already assigned
    return lut, m


@numba.njit(nogil=True, cache=True)
def _connected_components(image, value, eight):
    h, w = image.shape
    out = np.empty((h, w), np.int32)
    parent = np.empty(h * w + 1, np.int32)
    count = np.empty(h * w + 1, np.int64)
    n = _label_provisional(image, value, eight, out, parent, count)
    lut, _ = _resolve(parent, n)
    for y in range(h):
        for x in range(w):
            out[y, x] = lut[out[y, x]]
    return out


@numba.njit(nogil=True, cache=True)
def _fill_holes(classes, out, lut, area, eight_objects):
    """Fill background components enclosed by a single object (step 3 of the module docstring).

    Background = ``out == 0``. Labels the background with a union-find pass that keeps only two rows of labels,
    recording per component whether it touches the image edge, which objects it borders, its size and its first
    pixel; then flood-fills each hole from its first pixel.
    """
    h, w = classes.shape
    nbr = 4 if eight_objects else 8  # background connectivity: the dual of the objects'
    prev = np.zeros(w, np.int32)
    cur = np.zeros(w, np.int32)
    cap = h * w // 2 + w + 2
    parent = np.empty(cap, np.int32)
    owner = np.empty(cap, np.int32)
    edge = np.empty(cap, np.bool_)
    size = np.empty(cap, np.int64)
    first = np.empty(cap, np.int64)
    n = 0
    for y in range(h):
        prev, cur = cur, prev
        for x in range(w):
            if out[y, x] != 0:
                cur[x] = 0
                continue
            # Decision trees as in _label_provisional, on the background (out == 0), two rows of labels.
            up = y > 0
            n_bg = up and out[y - 1, x] == 0
            w_bg = x > 0 and out[y, x - 1] == 0
            nw_bg = up and x > 0 and out[y - 1, x - 1] == 0
            lab = 0
            if eight_objects:  # 4-connected background
                if n_bg:
                    lab = prev[x]
                    if w_bg and not nw_bg and cur[x - 1] != lab:
                        _union(parent, lab, cur[x - 1])
                elif w_bg:
                    lab = cur[x - 1]
            else:  # 8-connected background
                ne_bg = up and x + 1 < w and out[y - 1, x + 1] == 0
                if n_bg:
                    lab = prev[x]
                elif w_bg:
                    lab = cur[x - 1]
                    if ne_bg:
                        _union(parent, lab, prev[x + 1])
                elif nw_bg:
                    lab = prev[x - 1]
                    if ne_bg:
                        _union(parent, lab, prev[x + 1])
                elif ne_bg:
                    lab = prev[x + 1]
            if lab == 0:
                n += 1
                parent[n] = n
                owner[n] = 0
                edge[n] = False
                size[n] = 0
                first[n] = y * w + x
                lab = n
            cur[x] = lab
            size[lab] += 1
            if y == 0 or x == 0 or y == h - 1 or x == w - 1:
                edge[lab] = True
            for k in range(nbr):
                yy = y + _DY[k]
                xx = x + _DX[k]
                if 0 <= yy < h and 0 <= xx < w:
                    obj = out[yy, xx]
                    if obj == 0:
                        continue
                    if classes[yy, xx] == INTERIOR:
                        obj = lut[obj]
                    if owner[lab] == 0:
                        owner[lab] = obj
                    elif owner[lab] != obj:
                        owner[lab] = -1
    # Fold the records of every provisional label into its root (roots are smaller, so one ascending sweep).
    for i in range(1, n + 1):
        r = _find(parent, i)
        if r != i:
            size[r] += size[i]
            edge[r] = edge[r] or edge[i]
            if owner[r] == 0:
                owner[r] = owner[i]
            elif owner[i] != 0 and owner[i] != owner[r]:
                owner[r] = -1
            if first[i] < first[r]:
                first[r] = first[i]
    stack = np.empty(0, np.int64)
    for i in range(1, n + 1):
        if parent[i] != i or edge[i] or owner[i] <= 0:
            continue
        k_obj = owner[i]
        area[k_obj] += size[i]
        if stack.size < size[i]:
            stack = np.empty(size[i], np.int64)
        p0 = first[i]
        out[p0 // w, p0 % w] = k_obj
        stack[0] = p0
        top = 1
        while top > 0:
            top -= 1
            p = stack[top]
            y = p // w
            x = p % w
            for k in range(nbr):
                yy = y + _DY[k]
                xx = x + _DX[k]
                if 0 <= yy < h and 0 <= xx < w and out[yy, xx] == 0:
                    out[yy, xx] = k_obj
                    stack[top] = yy * w + xx
                    top += 1


@numba.njit(nogil=True, cache=True)
def _instances(classes, eight, max_grow, min_area):
    h, w = classes.shape
    nbr = 8 if eight else 4
    out = np.empty((h, w), np.int32)
    cap = h * w + 1
    parent = np.empty(cap, np.int32)
    count = np.empty(cap, np.int64)

    # 1. Seeds. Interior pixels keep their provisional label in ``out`` until the last pass; every other pixel
    #    holds a seed id (or 0), so the seed id of a pixel is ``lut[out]`` for interior pixels and ``out`` otherwise.
    n = _label_provisional(classes, INTERIOR, eight, out, parent, count)
    lut, n_seeds = _resolve(parent, n)
    area = np.zeros(n_seeds + 1, np.int64)
    for i in range(1, n + 1):
        area[lut[i]] += count[i]

    # 2. Growth through boundary pixels, one round per step.
    n_boundary = 0
    for y in range(h):
        for x in range(w):
            if classes[y, x] == BOUNDARY:
                n_boundary += 1
    queue = np.empty(max(n_boundary, 1), np.int64)
    tail = 0
    if max_grow >= 1:
        for y in range(h):
            for x in range(w):
                if classes[y, x] != BOUNDARY:
                    continue
                for k in range(nbr):
                    yy = y + _DY[k]
                    xx = x + _DX[k]
                    if 0 <= yy < h and 0 <= xx < w and classes[yy, xx] == INTERIOR:
                        s = lut[out[yy, xx]]
                        out[y, x] = s
                        area[s] += 1
                        queue[tail] = y * w + x
                        tail += 1
                        break
    head = 0
    for _ in range(1, max_grow):
        end = tail
        if head == end:
            break
        while head < end:
            p = queue[head]
            head += 1
            s = out[p // w, p % w]
            y = p // w
            x = p % w
            for k in range(nbr):
                yy = y + _DY[k]
                xx = x + _DX[k]
                if 0 <= yy < h and 0 <= xx < w and classes[yy, xx] == BOUNDARY and out[yy, xx] == 0:
                    out[yy, xx] = s
                    area[s] += 1
                    queue[tail] = yy * w + xx
                    tail += 1

    # 3. Holes.
    _fill_holes(classes, out, lut, area, eight)

    # 4. + 5. Drop small objects, renumber in raster order of the first pixel.
    new = np.zeros(n_seeds + 1, np.int32)
    m = 0
    for y in range(h):
        for x in range(w):
            s = out[y, x]
            if s == 0:
                continue
            if classes[y, x] == INTERIOR:
                s = lut[s]
            if area[s] < min_area:
                out[y, x] = 0
                continue
            if new[s] == 0:
                m += 1
                new[s] = m
            out[y, x] = new[s]
    return out


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
    if mask.dtype == np.bool_:
        image = np.ascontiguousarray(mask).view(np.uint8)
    elif np.issubdtype(mask.dtype, np.integer):
        image = (mask != 0).view(np.uint8)
    else:
        raise ValueError(f"mask must be a bool or integer array, got dtype {mask.dtype}")
    return _connected_components(image, np.uint8(1), eight)


def instances_from_classes(
    class_map: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 8,
    max_grow: int = DEFAULT_MAX_GROW,
) -> np.ndarray:
    """Nuclei instances from a class map (0 background, 1 interior, 2 boundary).

    The inverse of ``nucleiscreen.kernels.targets.classes_from_instances``; the steps (seeds, geodesic growth of the
    seeds through boundary pixels, hole filling, small-object removal, renumbering) are defined in the module
    docstring.

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
        Number of growth rounds: a boundary pixel further than this many steps (through boundary pixels) from every
        seed stays background. 0 disables growth. The default (8) is a few pixels more than the 2-px band of the
        training target, so a predicted band somewhat wider than the trained one is still absorbed, while boundary
        pixels far from any interior (debris, long bands between cells) are not annexed.

    Returns
    -------
    (H, W) int32 array
        0 background, objects 1..N in raster order of their first pixel.

    Raises
    ------
    ValueError
        If ``class_map`` is not a 2-D uint8 array with values in {0, 1, 2}, or a parameter is out of range.
    """
    _check_2d("class_map", class_map)
    if class_map.dtype != np.uint8:
        raise ValueError(f"class_map must be uint8 (0 background, 1 interior, 2 boundary), got dtype {class_map.dtype}")
    eight = _check_connectivity(connectivity)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if max_grow < 0:
        raise ValueError(f"max_grow must be >= 0, got {max_grow}")
    classes = np.ascontiguousarray(class_map)
    if classes.size and classes.max() > BOUNDARY:
        raise ValueError(
            f"class_map must hold only 0 (background), 1 (interior), 2 (boundary), found {int(classes.max())}"
        )
    return _instances(classes, eight, int(max_grow), int(min_area))
