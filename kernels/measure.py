"""Per-object measurements with CellProfiler's names, and the per-frame summary of the image table.

Objects are measured as runs (maximal stretches of one label in a row). ``segment_and_measure`` and
``segment_and_summarize`` take them straight from the kernel of ``instances_from_classes``, so the class map is read
once and the label image is only written, in the same pass that measures; ``measure`` and ``summarize_frame`` cut a
label image into runs first. Numba kernels (``nogil=True``, so frames can be measured on threads) then:

- compute the perimeter's border pixels and their weight classes on bit planes, 64 pixels per word operation;
- in one pass over the runs, accumulate per label the pixel count, the coordinate sums and second moments (closed
  forms per run), the bounding box, whether it touches the image edge, the intensity sums and maximum (the one loop
  over pixels, over object pixels only) and its border pixels of each weight class (counted per run);
- derive the columns below from those sums.

Definitions (x = column, y = row, both 0-based; n = pixels of the object; sums run over its pixels). CellProfiler 4's
MeasureObjectSizeShape takes these straight from ``skimage.measure.regionprops``, so "= skimage" below also means
"= CellProfiler" unless said otherwise; the tests check each one against ``skimage.measure.regionprops_table``.

``ObjectNumber``
    The label value.
``AreaShape_Area``
    n (= skimage ``area``).
``AreaShape_Center_X``, ``AreaShape_Center_Y``
    mean x, mean y (= skimage ``centroid-1``, ``centroid-0``).
``AreaShape_BoundingBoxMinimum_X/Y``, ``AreaShape_BoundingBoxMaximum_X/Y``
    min x, min y, max x + 1, max y + 1: the maximum is exclusive, as skimage's ``bbox`` and CellProfiler's columns.
``AreaShape_Perimeter``
    skimage's ``perimeter`` (neighbourhood 4, Benkrid & Crookes): the pixels of the object with a 4-neighbour outside
    it (or outside the image) are its border pixels; each border pixel is weighted by the configuration of the border
    pixels of the same object among its 8 neighbours (1 for straight runs, sqrt 2 for diagonal steps, (1 + sqrt 2)/2
    for corners, 0 otherwise), and the weights are summed (as counts per weight times the weight, as skimage does).
``AreaShape_MajorAxisLength``, ``AreaShape_MinorAxisLength``, ``AreaShape_Eccentricity``
    With the covariance of the coordinates (population, divided by n) a = var x, c = var y, b = -cov(x, y), the
    eigenvalues l1 >= l2 >= 0 of [[a, b], [b, c]]: 4 sqrt(l1), 4 sqrt(l2), sqrt(1 - l2 / l1) (0 when l1 = 0) -- the
    axes of the ellipse with the same second moments (= skimage ``axis_major_length``, ``axis_minor_length``,
    ``eccentricity``).
``AreaShape_Orientation``
    Degrees in [-90, 90]: 0.5 atan2(-2 b, c - a) in skimage's convention (the angle between the row axis and the
    major axis, counter-clockwise; +-45 when a = c), times 180 / pi -- exactly what CellProfiler 4 stores.
``AreaShape_EquivalentDiameter``
    sqrt(4 n / pi), the diameter of the disc of the same area (= skimage ``equivalent_diameter_area``).
``AreaShape_Extent``
    n / bounding-box area (= skimage ``extent``).
``Intensity_{IntegratedIntensity,MeanIntensity,StdIntensity,MaxIntensity}_<channel>``
    Sum, mean, population standard deviation and maximum of the intensity over the object's pixels (= skimage
    ``intensity_mean``, ``intensity_std``, ``intensity_max``; the sum = mean x area). In the raw units of the frame:
    CellProfiler divides 16-bit images by 65535 (and 8-bit by 255) before measuring, so its values are these divided
    by the full scale of the image's type. 8- and 16-bit frames are summed exactly in integers.
``TouchesBorder``
    True when the object has a pixel in the first or last row or column of the frame. (Not a CellProfiler
    measurement; CellProfiler discards such objects at identification when asked.)
``AreaShape_ConvexArea``, ``AreaShape_Solidity`` (only with ``solidity=True``: a convex hull per object)
    The number of pixels whose centre lies in the convex hull (boundary included) of the object's pixels, each pixel
    taken as the diamond of its four edge midpoints (x +- 1/2, y) and (x, y +- 1/2); and n / that number
    (= skimage ``area_convex`` and ``solidity``, which use ``convex_hull_image`` with offset coordinates). Computed
    exactly in integers (coordinates doubled): the hull's two sides by Andrew's monotone chain over the extreme
    diamond corners of each row, then the pixel centres between them row by row.

Not computed: FormFactor (= 4 pi Area / Perimeter^2, derive it from the table), Compactness, EulerNumber, Feret
diameters, radii, Zernike moments.

``summarize_frame`` gives the per-frame image-table values from the same runs (moments and perimeter skipped).
Objects under ``micronucleus_area`` pixels are micronuclei (including nuclear fragments), the others nuclei:

``Count_Nuclei``
    Nuclei, border-touching ones included (the count that fold changes are computed on).
``Count_Micronuclei``
    Micronuclei, border-touching ones included.
``Count_Nuclei_NonBorder``
    Nuclei not touching the border.
``Total_Nuclei_AreaShape_Area``, ``Mean_Nuclei_AreaShape_Area``, ``Median_Nuclei_AreaShape_Area``
    Sum, mean and median of the area over the nuclei not touching the border (objects cut by the frame edge would
    bias the size); the sum is 0 and the mean and median None when there are none. Total and count together give
    exact object-weighted means when frames are pooled per well.
``Mean_Nuclei_Intensity_MeanIntensity_<channel>``
    Mean over the same nuclei of their mean intensity (None when there are none).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import polars as pl
from numba.cpython.unsafe.numbers import trailing_zeros

from nucleiscreen.kernels.instances import (
    _LOW_BITS,
    _PACK,
    DEFAULT_MAX_GROW,
    DEFAULT_MIN_AREA,
    _0,
    _1,
    _56,
    _63,
    _fill16,
    _u,
    check_class_map,
    instance_runs,
    popcount,
    workspace,
)

DEFAULT_MICRONUCLEUS_AREA = 100

_SQRT2 = math.sqrt(2.0)
_CORNER = (1.0 + math.sqrt(2.0)) / 2.0


def object_schema(channel: str = "DNA", solidity: bool = False) -> dict[str, pl.DataType]:
    """Column names and dtypes of the ``measure`` table, in order."""
    schema: dict[str, pl.DataType] = {"ObjectNumber": pl.Int64, "AreaShape_Area": pl.Int64}
    schema |= {f"AreaShape_Center_{a}": pl.Float64 for a in "XY"}
    schema |= {f"AreaShape_BoundingBox{m}_{a}": pl.Int32 for m in ("Minimum", "Maximum") for a in "XY"}
    for name in (
        "Perimeter",
        "MajorAxisLength",
        "MinorAxisLength",
        "Eccentricity",
        "Orientation",
        "EquivalentDiameter",
        "Extent",
    ):
        schema[f"AreaShape_{name}"] = pl.Float64
    for name in ("IntegratedIntensity", "MeanIntensity", "StdIntensity", "MaxIntensity"):
        schema[f"Intensity_{name}_{channel}"] = pl.Float64
    schema["TouchesBorder"] = pl.Boolean
    if solidity:
        schema["AreaShape_ConvexArea"] = pl.Int64
        schema["AreaShape_Solidity"] = pl.Float64
    return schema


# --- label image -> runs -----------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _label_runs(labels, fx0, fx1, fid, frs):
    """Cut a label image into runs of one nonzero label per row. Returns (count, smallest label, largest label).

    Where a row changes label is marked in a byte per pixel (a loop the compiler vectorises), packed 8 to a byte and
    visited with trailing-zero counts, so long runs cost a few operations per 64 pixels.
    """
    h, w = labels.shape
    nb = (w + 64) // 64 * 8  # change bytes per row, whole words, at least one past the end
    change = np.zeros(nb * 8, np.uint8)
    change64 = change.view(np.uint64)
    bits = np.zeros(nb, np.uint8)
    bits64 = bits.view(np.uint64)
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


# --- perimeter: weight classes on bit planes ---------------------------------------------------------------------


class _Planes:
    """Bit planes for the perimeter, reused by one thread: rows of ``nw = w // 64 + 1`` words (at least one
    always-zero column), image row y at plane row y + 2, two rows of zeros above and below."""

    def __init__(self, h: int, w: int):
        self.shape = (h, w)
        self.nw = w // 64 + 1
        self.planes = np.zeros((9, (h + 4) * self.nw), np.uint64)


_local = threading.local()


def _planes(h: int, w: int) -> _Planes:
    p = getattr(_local, "planes", None)
    if p is None or p.shape != (h, w):
        p = _Planes(h, w)
        _local.planes = p
    return p


@numba.njit(nogil=True, cache=True)
def _set_bits(plane, base, x0, x1, on):
    """Set (``on``) or clear bits x0..x1 of the plane row at ``base``."""
    all_bits = ~_0
    for k in range(x0 >> 6, (x1 >> 6) + 1):
        lo = max(x0 - 64 * k, 0)
        hi = min(x1 - 64 * k, 63)
        m = (all_bits >> np.uint64(63 - hi)) & (all_bits << np.uint64(lo))
        if on:
            plane[_u(base + k)] |= m
        else:
            plane[_u(base + k)] &= ~m


@numba.njit(nogil=True, cache=True)
def _weight_planes(fx0, fx1, fid, frs, touch, h, nw, planes):
    """The border pixels of skimage's perimeter (module docstring) in its three weight classes, as bit planes 6, 7, 8
    (weights 1, sqrt 2, (1 + sqrt 2) / 2), 64 pixels per word operation.

    Planes (bit x of a row = pixel x): F foreground; "same object" relations Hs (pixel and its right neighbour), Vs
    (pixel and the one below), D1 (and the one below right), D2 (the right neighbour and the pixel below): the
    foreground's, with the pairs of touching runs of different objects cut out (looked for in the rows where
    ``touch`` says objects may touch). Border pixels E; then each one's border neighbours of the same object,
    counted with bit-sliced adders. (The word loops index with uint64: no negative-index checks, so they vectorise.)
    """
    f = planes[0]
    hs = planes[1]
    vs = planes[2]
    d1 = planes[3]
    d2 = planes[4]
    e = planes[5]
    w1 = planes[6]
    w2 = planes[7]
    w3 = planes[8]
    unw = np.uint64(nw)
    lo = np.uint64(2 * nw)  # first word of image row 0
    hi = np.uint64((h + 2) * nw)  # one past the last word of image row h - 1
    f[:] = _0
    for y in range(h):
        base = (y + 2) * nw
        for r in range(frs[y], frs[y + 1]):
            _set_bits(f, base, fx0[r], fx1[r], True)
    for i in range(unw, hi):
        fi = f[i]
        fr = (fi >> _1) | (f[i + _1] << _63)  # right neighbour
        fd = f[i + unw]  # below
        hs[i] = fi & fr
        vs[i] = fi & fd
        d1[i] = fi & ((fd >> _1) | (f[i + unw + _1] << _63))
        d2[i] = fr & fd
    # cut the relations between touching runs of different objects
    for y in range(h):
        if not touch[y]:
            continue
        base = (y + 2) * nw
        for r in range(frs[y], frs[y + 1] - 1):
            if fx1[r] + 1 == fx0[r + 1]:
                _set_bits(hs, base, fx1[r], fx1[r], False)
        if y + 1 == h or not touch[y + 1]:
            continue
        # every pair of 8-adjacent runs of rows y and y + 1 (runs of a row may touch, so no plain merge)
        j0 = frs[y + 1]
        for i in range(frs[y], frs[y + 1]):
            a0 = fx0[i]
            a1 = fx1[i]
            while j0 < frs[y + 2] and fx1[j0] < a0 - 1:
                j0 += 1
            j = j0
            while j < frs[y + 2] and fx0[j] <= a1 + 1:
                if fid[i] != fid[j]:
                    b0 = fx0[j]
                    b1 = fx1[j]
                    if max(a0, b0) <= min(a1, b1):
                        _set_bits(vs, base, max(a0, b0), min(a1, b1), False)
                    if max(a0, b0 - 1) <= min(a1, b1 - 1):
                        _set_bits(d1, base, max(a0, b0 - 1), min(a1, b1 - 1), False)
                    if max(a0 - 1, b0) <= min(a1 - 1, b1):
                        _set_bits(d2, base, max(a0 - 1, b0), min(a1 - 1, b1), False)
                j += 1
    for i in range(lo, hi):
        hsi = hs[i]
        e[i] = f[i] & ~(hsi & ((hsi << _1) | (hs[i - _1] >> _63)) & vs[i] & vs[i - unw])
    for i in range(lo, hi):
        ei = e[i]
        up = i - unw
        dn = i + unw
        # border neighbours of the same object: left, right, up, down; then up-left, down-right, up-right, down-left
        a = ((ei & hs[i]) << _1) | ((e[i - _1] & hs[i - _1]) >> _63)
        b = ((ei >> _1) | (e[i + _1] << _63)) & hs[i]
        c = e[up] & vs[up]
        d = e[dn] & vs[i]
        p = ((d1[up] & e[up]) << _1) | ((d1[up - _1] & e[up - _1]) >> _63)
        q = d1[i] & ((e[dn] >> _1) | (e[dn + _1] << _63))
        s = d2[up] & ((e[up] >> _1) | (e[up + _1] << _63))
        t = ((d2[i] & e[dn]) << _1) | ((d2[i - _1] & e[dn - _1]) >> _63)
        # n4 = a + b + c + d and nd = p + q + s + t as bit slices (bit 0, bit 1, bit 2)
        x1 = a ^ b
        x2 = c ^ d
        n0 = x1 ^ x2
        c1 = a & b
        c2 = c & d
        c3 = x1 & x2
        n1 = c1 ^ c2 ^ c3
        n2 = (c1 & c2) | (c3 & (c1 | c2))
        y1 = p ^ q
        y2 = s ^ t
        m0 = y1 ^ y2
        e1 = p & q
        e2 = s & t
        e3 = y1 & y2
        m1 = e1 ^ e2 ^ e3
        m2 = (e1 & e2) | (e3 & (e1 | e2))
        four_1 = n0 & ~n1 & ~n2
        # weight 1: n4 in {2, 3}, nd <= 2; sqrt 2: (n4, nd) = (0, 2) or (1, 3); corner: n4 = 1, nd in {1, 2}
        w1[i] = ei & n1 & ~n2 & ~((m0 & m1) | m2)
        w2[i] = ei & ((~(n0 | n1 | n2) & ~m0 & m1 & ~m2) | (four_1 & m0 & m1))
        w3[i] = ei & four_1 & (m0 ^ m1) & ~m2


# --- one pass over the runs --------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _sum_squares(m):
    """0^2 + 1^2 + ... + m^2 for m >= 0; for m < 0 the value that keeps S(b) - S(a - 1) = sum of d^2 over a..b."""
    return m * (m + 1) * (2 * m + 1) // 6


@numba.njit(nogil=True, cache=True)
def _accumulate(fx0, fx1, fid, frs, n, intensity, exact, shape, planes, nw, labels):
    """Per-label sums over the runs, for labels 1..n (see the module docstring), in one pass that also counts the
    perimeter weight classes (``shape``; planes from ``_weight_planes``) and paints ``labels`` (if not empty).

    Coordinates are taken relative to each object's first pixel, which keeps the second moments exact in int64 and
    free of cancellation. ``exact``: the intensities are 8- or 16-bit integers, summed (and squared) in int64, and
    the deviations from the first pixel's intensity derived exactly from those sums; otherwise the deviations are
    summed in float64. With ``shape`` False the moments and perimeter are skipped. ``intensity`` is C-contiguous.
    """
    h, w = intensity.shape
    flat = intensity.reshape(-1)
    out = labels.reshape(-1)
    paint = out.size > 0
    area = np.zeros(n + 1, np.int64)
    x0 = np.zeros(n + 1, np.int64)
    y0 = np.zeros(n + 1, np.int64)
    xmin = np.zeros(n + 1, np.int64)
    xmax = np.zeros(n + 1, np.int64)
    ymax = np.zeros(n + 1, np.int64)
    sx = np.zeros(n + 1, np.int64)
    sy = np.zeros(n + 1, np.int64)
    sxx = np.zeros(n + 1, np.int64)
    syy = np.zeros(n + 1, np.int64)
    sxy = np.zeros(n + 1, np.int64)
    touches = np.zeros(n + 1, np.bool_)
    ref = np.zeros(n + 1, np.float64)
    isum = np.zeros(n + 1, np.float64)
    idev = np.zeros(n + 1, np.float64)
    idev2 = np.zeros(n + 1, np.float64)
    imax = np.zeros(n + 1, np.float64)
    jref = np.zeros(n + 1, np.int64)
    jsum = np.zeros(n + 1, np.int64)
    jsq = np.zeros(n + 1, np.int64)
    jmax = np.zeros(n + 1, np.int64)
    c1 = np.zeros(n + 1, np.int64)
    c2 = np.zeros(n + 1, np.int64)
    c3 = np.zeros(n + 1, np.int64)
    w1 = planes[6]
    w2 = planes[7]
    w3 = planes[8]
    all_bits = ~_0
    for y in range(h):
        edge_row = y == 0 or y == h - 1
        row = y * w
        pbase = (y + 2) * nw
        painted = 0
        stores16 = row + w + 16 <= out.size  # room after this row for _fill16's overshoot
        for r in range(frs[y], frs[y + 1]):
            k = _u(fid[r])
            a = np.int64(fx0[r])
            b = np.int64(fx1[r])
            if paint:
                if stores16:
                    _fill16(out, _u(row + painted), _u(row + a), 0)
                    _fill16(out, _u(row + a), _u(row + b + 1), fid[r])
                else:
                    out[row + painted : row + a] = 0
                    out[row + a : row + b + 1] = fid[r]
                painted = b + 1
            length = b - a + 1
            lo = _u(row + a)
            hi = _u(row + b + 1)
            if area[k] == 0:
                x0[k] = a
                y0[k] = y
                xmin[k] = a
                xmax[k] = b
                ref[k] = flat[lo]
                imax[k] = flat[lo]
                jref[k] = np.int64(flat[lo])
                jmax[k] = np.int64(flat[lo])
            area[k] += length
            xmin[k] = min(xmin[k], a)
            xmax[k] = max(xmax[k], b)
            ymax[k] = y
            if edge_row or a == 0 or b == w - 1:
                touches[k] = True
            if exact:
                s1 = np.int64(0)
                s2 = np.int64(0)
                mx = jmax[k]
                for i in range(lo, hi):
                    v = np.int64(flat[i])
                    s1 += v
                    s2 += v * v
                    mx = max(mx, v)
                jsum[k] += s1
                jsq[k] += s2
                jmax[k] = mx
            else:
                base = ref[k]
                s = 0.0
                f1 = 0.0
                f2 = 0.0
                fm = imax[k]
                for i in range(lo, hi):
                    v = np.float64(flat[i])
                    s += v
                    d = v - base
                    f1 += d
                    f2 += d * d
                    if v > fm:
                        fm = v
                isum[k] += s
                idev[k] += f1
                idev2[k] += f2
                imax[k] = fm
            if shape:
                rx0 = a - x0[k]
                rx1 = b - x0[k]
                dy = y - y0[k]
                run_sx = (rx0 + rx1) * length // 2
                sx[k] += run_sx
                sxx[k] += _sum_squares(rx1) - _sum_squares(rx0 - 1)
                sy[k] += length * dy
                syy[k] += length * dy * dy
                sxy[k] += dy * run_sx
                # the run's border pixels of each weight class
                last = _u(pbase + (b >> 6))
                m = all_bits << np.uint64(a & 63)
                one = 0
                sqrt2 = 0
                corner = 0
                for i in range(_u(pbase + (a >> 6)), last + _1):
                    if i == last:
                        m &= all_bits >> np.uint64(63 - (b & 63))
                    one += popcount(w1[i] & m)
                    sqrt2 += popcount(w2[i] & m)
                    corner += popcount(w3[i] & m)
                    m = all_bits
                c1[k] += one
                c2[k] += sqrt2
                c3[k] += corner
        if paint:
            out[row + painted : row + w] = 0
    if exact:
        for k in range(n + 1):
            isum[k] = jsum[k]
            idev[k] = jsum[k] - area[k] * jref[k]
            idev2[k] = jsq[k] - 2 * jref[k] * jsum[k] + area[k] * jref[k] * jref[k]
            imax[k] = jmax[k]
    return area, x0, y0, xmin, xmax, ymax, sx, sy, sxx, syy, sxy, touches, isum, idev, idev2, imax, c1, c2, c3


@numba.njit(nogil=True, cache=True)
def _derive(area, x0, y0, xmin, xmax, ymax, sx, sy, sxx, syy, sxy, touches, isum, idev, idev2, imax, c1, c2, c3):
    """The table's columns (module docstring) for the labels present, from the sums of ``_accumulate``."""
    m = 0
    for k in range(1, area.size):
        m += area[k] > 0
    number = np.empty(m, np.int64)
    out_area = np.empty(m, np.int64)
    bbox = np.empty((4, m), np.int32)
    f = np.empty((15, m), np.float64)
    border = np.empty(m, np.bool_)
    j = 0
    for k in range(1, area.size):
        if area[k] == 0:
            continue
        a = area[k]
        n = np.float64(a)
        # n^2 x the central second moments, exact in int64 while n * (largest |dx|) < 2^31 (any object of a frame up
        # to 1,290 x 1,290, and every nucleus-sized object of any frame); beyond that, float64.
        if a * max(xmax[k] - xmin[k], ymax[k] - y0[k]) < 2**31:
            ixx = a * sxx[k] - sx[k] * sx[k]
            iyy = a * syy[k] - sy[k] * sy[k]
            mxx = np.float64(ixx)
            myy = np.float64(iyy)
            mxy = np.float64(a * sxy[k] - sx[k] * sy[k])
            dxy = np.float64(ixx - iyy)  # exactly 0 for var x == var y
        else:
            fx = np.float64(sx[k])
            fy = np.float64(sy[k])
            mxx = n * sxx[k] - fx * fx
            myy = n * syy[k] - fy * fy
            mxy = n * sxy[k] - fx * fy
            dxy = mxx - myy
        # skimage's inertia tensor is [[a, b], [b, c]] with a = var x, c = var y, b = -cov(x, y); here scaled by n^2
        n2 = n * n
        half_sum = (mxx + myy) / (2 * n2)
        radius = math.hypot(dxy / 2, mxy) / n2
        l1 = max(half_sum + radius, 0.0)
        l2 = max(half_sum - radius, 0.0)
        eccentricity = math.sqrt(min(max(1 - l2 / l1, 0.0), 1.0)) if l1 > 0 else 0.0
        # 0.5 atan2(-2b, c - a), and skimage's +-pi/4 when a == c
        if dxy == 0:
            orientation = math.pi / 4 if mxy > 0 else -math.pi / 4
        else:
            orientation = 0.5 * math.atan2(2.0 * mxy, -dxy)
        number[j] = k
        out_area[j] = a
        bbox[0, j] = xmin[k]
        bbox[1, j] = y0[k]
        bbox[2, j] = xmax[k] + 1
        bbox[3, j] = ymax[k] + 1
        f[0, j] = x0[k] + sx[k] / n
        f[1, j] = y0[k] + sy[k] / n
        f[2, j] = c1[k] + _SQRT2 * c2[k] + _CORNER * c3[k]
        f[3, j] = 4 * math.sqrt(l1)
        f[4, j] = 4 * math.sqrt(l2)
        f[5, j] = eccentricity
        f[6, j] = math.degrees(orientation)
        f[7, j] = math.sqrt(4 * n / math.pi)
        f[8, j] = n / ((xmax[k] - xmin[k] + 1) * (ymax[k] - y0[k] + 1))
        f[9, j] = isum[k]
        f[10, j] = isum[k] / n
        f[11, j] = math.sqrt(max(idev2[k] / n - (idev[k] / n) ** 2, 0.0))
        f[12, j] = imax[k]
        border[j] = touches[k]
        j += 1
    return number, out_area, bbox, f, border


# --- convex hull (solidity) --------------------------------------------------------------------------------------


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
def _convex_areas(fx0, fx1, fid, frs, n, h):
    """Pixels of each object's convex hull (``convex_hull_image`` with offset coordinates; module docstring).

    Coordinates are doubled so that every diamond corner is an integer point (X, Y) = (2x +- 1, 2y) or (2x, 2y +- 1).
    Each level Y of the corners contributes its leftmost and rightmost corner; the hull's left side is the convex
    chain of the leftmost ones, its right side that of the rightmost ones, and the pixel centres (2x, 2y) between the
    two sides are counted row by row, exactly, as fractions.
    """
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


# --- tables ------------------------------------------------------------------------------------------------------


def _exact(intensity: np.ndarray) -> bool:
    return intensity.dtype.kind in "ui" and intensity.dtype.itemsize <= 2


def _check_intensity(intensity: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(intensity, np.ndarray):
        raise ValueError(f"intensity must be a numpy array, got {type(intensity).__name__}")
    if intensity.ndim != 2:
        raise ValueError(f"intensity must be a 2-D array (H, W), got {intensity.ndim}-D with shape {intensity.shape}")
    if intensity.dtype == np.bool_ or intensity.dtype.kind not in "uif":
        raise ValueError(f"intensity must be an integer or floating-point array, got dtype {intensity.dtype}")
    if intensity.shape != shape:
        raise ValueError(f"labels {shape} and intensity {intensity.shape} must have the same shape")
    return intensity


def _check_labels(labels: np.ndarray) -> None:
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array (H, W), got {labels.ndim}-D with shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")


class _Runs:
    """Objects as runs: row y's runs are x0[rs[y]:rs[y + 1]] etc.; ids 1..n; ``numbers``: the label of each id
    (None: the id); ``touch[y]``: whether objects of row y may touch other objects."""

    def __init__(self, x0, x1, ids, rs, n, numbers, touch):
        self.x0, self.x1, self.ids, self.rs, self.n, self.numbers, self.touch = x0, x1, ids, rs, n, numbers, touch


def _no_runs(h: int) -> _Runs:
    return _Runs(*(np.zeros(1, np.int32) for _ in range(3)), np.zeros(h + 1, np.int64), 0, None, np.ones(h, bool))


def _runs_of_labels(labels: np.ndarray) -> _Runs:
    """The runs of a validated label image; huge or sparse ids are compacted (per-id arrays are sized by the id)."""
    h, w = labels.shape
    if labels.size == 0:
        return _no_runs(h)
    ws = workspace(h, w)
    _, lo, hi = _label_runs(labels, ws.fx0, ws.fx1, ws.fid, ws.frs)
    unsigned = labels.dtype.kind == "u"  # a uint64 id >= 2^63 reads as negative in the kernel
    if lo < 0 and not unsigned:
        raise ValueError("labels must be >= 0 (0 = background)")
    numbers = None
    if lo < 0 or hi >= 2**31 - 1 or hi > labels.size:
        # sparse huge ids: the run ids (int32) cannot hold them, so cut again with compact ids
        ids, inverse = np.unique(labels, return_inverse=True)
        compact = inverse.reshape(labels.shape).astype(np.int32) + (1 if ids[0] != 0 else 0)
        numbers = ids if ids[0] == 0 else np.concatenate([[0], ids])
        _, _, hi = _label_runs(compact, ws.fx0, ws.fx1, ws.fid, ws.frs)
    return _Runs(ws.fx0, ws.fx1, ws.fid, ws.frs, int(hi), numbers, np.ones(h, bool))


def _runs_of_classes(class_map: np.ndarray, min_area: int, connectivity: int, max_grow: int) -> _Runs:
    x0, x1, ids, rs, n, touch = instance_runs(class_map, min_area, connectivity, max_grow)
    return _Runs(x0, x1, ids, rs, int(n), None, touch)


_NO_LABELS = np.zeros((0, 0), np.int32)


def _sums(runs: _Runs, intensity: np.ndarray, shape: bool, labels: np.ndarray | None) -> tuple:
    """``_accumulate``'s sums (after ``_weight_planes`` if ``shape``), painting ``labels`` if given."""
    h, w = intensity.shape
    # (numba has no float16 arithmetic; float32 holds every float16 exactly)
    intensity = np.ascontiguousarray(intensity, np.float32 if intensity.dtype == np.float16 else None)
    planes = _planes(h, w)
    if shape:
        _weight_planes(runs.x0, runs.x1, runs.ids, runs.rs, runs.touch, h, planes.nw, planes.planes)
    return _accumulate(
        runs.x0, runs.x1, runs.ids, runs.rs, runs.n, intensity, _exact(intensity), shape, planes.planes, planes.nw,
        _NO_LABELS if labels is None else labels,
    )  # fmt: skip


def _table(runs: _Runs, intensity: np.ndarray, channel: str, solidity: bool, labels=None) -> pl.DataFrame:
    acc = _sums(runs, intensity, True, labels)
    number, area, bbox, f, touches = _derive(*acc)
    if runs.numbers is not None:
        number = runs.numbers[number]
    columns = [number, area, f[0], f[1], *bbox, *f[2:13], touches]
    if solidity:
        convex = _convex_areas(runs.x0, runs.x1, runs.ids, runs.rs, runs.n, intensity.shape[0])[acc[0] > 0]
        columns += [convex, area / convex]
    names = object_schema(channel, solidity)  # the columns already have its dtypes
    return pl.DataFrame([pl.Series(name, col) for name, col in zip(names, columns, strict=True)])


def _summary(
    area: np.ndarray, touches: np.ndarray, mean_intensity: np.ndarray, micronucleus_area: int, channel: str
) -> dict[str, int | float | None]:
    nuclei = area >= micronucleus_area
    kept = nuclei & ~touches
    kept_area = area[kept]
    any_kept = kept_area.size > 0
    return {
        "Count_Nuclei": int(nuclei.sum()),
        "Count_Micronuclei": int((~nuclei).sum()),
        "Count_Nuclei_NonBorder": int(kept.sum()),
        "Total_Nuclei_AreaShape_Area": int(kept_area.sum()),
        "Mean_Nuclei_AreaShape_Area": float(kept_area.mean()) if any_kept else None,
        "Median_Nuclei_AreaShape_Area": float(np.median(kept_area)) if any_kept else None,
        f"Mean_Nuclei_Intensity_MeanIntensity_{channel}": float(mean_intensity[kept].mean()) if any_kept else None,
    }


def _frame_summary(runs: _Runs, intensity: np.ndarray, micronucleus_area: int, channel: str, labels=None) -> dict:
    acc = _sums(runs, intensity, False, labels)
    present = acc[0][1:] > 0
    area = acc[0][1:][present]
    return _summary(area, acc[11][1:][present], acc[12][1:][present] / area, micronucleus_area, channel)


# --- public API ----------------------------------------------------------------------------------------------------


def measure(labels: np.ndarray, intensity: np.ndarray, channel: str = "DNA", solidity: bool = False) -> pl.DataFrame:
    """Measure every object of a label image: one row per object, CellProfiler's column names.

    Parameters
    ----------
    labels : (H, W) integer array
        0 = background, objects > 0 (ids need not be consecutive; each id is one object even if disconnected).
    intensity : (H, W) integer or floating-point array
        The frame the intensities are measured on, in its raw units.
    channel : str
        Suffix of the intensity columns (``Intensity_MeanIntensity_<channel>``).
    solidity : bool
        Also compute ``AreaShape_ConvexArea`` and ``AreaShape_Solidity`` (a convex hull per object: about 40 % more
        time on a dense frame).

    Returns
    -------
    polars.DataFrame
        One row per label present, in increasing label order, with the columns of ``object_schema(channel,
        solidity)``; their definitions are in the module docstring. No objects: an empty table with the same columns.

    Raises
    ------
    ValueError
        If the arrays are not 2-D, differ in shape, have the wrong dtype, or labels are negative.
    """
    _check_labels(labels)
    intensity = _check_intensity(intensity, labels.shape)
    return _table(_runs_of_labels(labels), intensity, channel, solidity)


def summarize_frame(
    labels: np.ndarray,
    intensity: np.ndarray,
    micronucleus_area: int = DEFAULT_MICRONUCLEUS_AREA,
    channel: str = "DNA",
) -> dict[str, int | float | None]:
    """Per-frame image-table values: nuclei and micronuclei counts, nuclear area and intensity.

    Parameters
    ----------
    labels : (H, W) integer array
        0 = background, objects > 0.
    intensity : (H, W) integer or floating-point array
        The frame, in its raw units.
    micronucleus_area : int
        Objects with fewer pixels are micronuclei (and nuclear fragments), the others nuclei. The default, 100 px,
        is for the CX7 at 20x, where a median nucleus has ~1,500 px.
    channel : str
        Suffix of the intensity key.

    Returns
    -------
    dict
        ``Count_Nuclei``, ``Count_Micronuclei``, ``Count_Nuclei_NonBorder``, ``Total_Nuclei_AreaShape_Area`` (int),
        ``Mean_Nuclei_AreaShape_Area``, ``Median_Nuclei_AreaShape_Area``,
        ``Mean_Nuclei_Intensity_MeanIntensity_<channel>`` (float, or None when no nucleus is off the border); the
        definitions are in the module docstring.

    Raises
    ------
    ValueError
        As ``measure``.
    """
    _check_labels(labels)
    intensity = _check_intensity(intensity, labels.shape)
    return _frame_summary(_runs_of_labels(labels), intensity, micronucleus_area, channel)


def summarize_objects(
    objects: pl.DataFrame, micronucleus_area: int = DEFAULT_MICRONUCLEUS_AREA, channel: str = "DNA"
) -> dict[str, int | float | None]:
    """``summarize_frame``'s values from a ``measure`` table of one frame (no second pass over the pixels)."""
    return _summary(
        objects["AreaShape_Area"].to_numpy(),
        objects["TouchesBorder"].to_numpy(),
        objects[f"Intensity_MeanIntensity_{channel}"].to_numpy(),
        micronucleus_area,
        channel,
    )


def _segment(class_map, intensity, min_area, connectivity, max_grow, label_image):
    """Validated inputs as (runs, empty label image or None, intensity); the label image is painted when measured."""
    check_class_map(class_map, min_area, connectivity, max_grow)
    intensity = _check_intensity(intensity, class_map.shape)
    if class_map.size == 0:
        return _no_runs(class_map.shape[0]), np.zeros(class_map.shape, np.int32) if label_image else None, intensity
    runs = _runs_of_classes(class_map, min_area, connectivity, max_grow)
    return runs, np.empty(class_map.shape, np.int32) if label_image else None, intensity


def segment_and_measure(
    class_map: np.ndarray,
    intensity: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 8,
    max_grow: int = DEFAULT_MAX_GROW,
    channel: str = "DNA",
    solidity: bool = False,
    label_image: bool = True,
) -> tuple[np.ndarray | None, pl.DataFrame]:
    """``instances_from_classes`` and ``measure`` in one pass: the class map is read once, the labels never read back.

    Parameters
    ----------
    class_map, min_area, connectivity, max_grow
        As ``nucleiscreen.kernels.instances.instances_from_classes``.
    intensity, channel, solidity
        As ``measure``.
    label_image : bool
        Return the label image (False: None in its place, and the time to write it is saved).

    Returns
    -------
    labels : (H, W) int32 array or None
        ``instances_from_classes(class_map, min_area, connectivity, max_grow)``.
    objects : polars.DataFrame
        ``measure(labels, intensity, channel, solidity)``.

    Raises
    ------
    ValueError
        As ``instances_from_classes`` and ``measure``.
    """
    runs, labels, intensity = _segment(class_map, intensity, min_area, connectivity, max_grow, label_image)
    return labels, _table(runs, intensity, channel, solidity, labels)


def segment_and_summarize(
    class_map: np.ndarray,
    intensity: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 8,
    max_grow: int = DEFAULT_MAX_GROW,
    micronucleus_area: int = DEFAULT_MICRONUCLEUS_AREA,
    channel: str = "DNA",
    label_image: bool = True,
) -> tuple[np.ndarray | None, dict[str, int | float | None]]:
    """``instances_from_classes`` and ``summarize_frame`` in one pass (the per-frame path of the engine).

    Parameters
    ----------
    class_map, min_area, connectivity, max_grow
        As ``nucleiscreen.kernels.instances.instances_from_classes``.
    intensity, micronucleus_area, channel
        As ``summarize_frame``.
    label_image : bool
        As ``segment_and_measure``.

    Returns
    -------
    labels : (H, W) int32 array or None
        As ``segment_and_measure``.
    summary : dict
        ``summarize_frame(labels, intensity, micronucleus_area, channel)``.

    Raises
    ------
    ValueError
        As ``instances_from_classes`` and ``measure``.
    """
    runs, labels, intensity = _segment(class_map, intensity, min_area, connectivity, max_grow, label_image)
    return labels, _frame_summary(runs, intensity, micronucleus_area, channel, labels)
