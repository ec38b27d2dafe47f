"""Per-object sums in one pass over the runs (pixel count, coordinate moments, bounding box, intensity sums, perimeter
weight counts), and the table's columns derived from them (the definitions are ``measure.py``'s docstring)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from nucleiscreen.kernels._bits import _0, _1, _u, popcount
from nucleiscreen.kernels._perimeter import _weight_planes
from nucleiscreen.kernels.runs import _fill16

_SQRT2 = math.sqrt(2.0)
_CORNER = (1.0 + math.sqrt(2.0)) / 2.0


class Sums(NamedTuple):
    """``_accumulate``'s sums, indexed by label 0..n (0 and absent labels: area 0). Coordinates are relative to the
    object's first pixel (x0, y0) in raster order (so y0 is also its smallest y)."""

    area: np.ndarray  # pixels
    x0: np.ndarray
    y0: np.ndarray
    xmin: np.ndarray
    xmax: np.ndarray
    ymax: np.ndarray
    sx: np.ndarray  # sum of x - x0
    sy: np.ndarray  # sum of y - y0
    sxx: np.ndarray  # sum of (x - x0)^2
    syy: np.ndarray  # sum of (y - y0)^2
    sxy: np.ndarray  # sum of (x - x0)(y - y0)
    touches: np.ndarray  # a pixel in the first or last row or column
    intensity_sum: np.ndarray
    deviation_sum: np.ndarray  # sum of (intensity - the first pixel's)
    deviation_squares: np.ndarray  # sum of (intensity - the first pixel's)^2
    intensity_max: np.ndarray
    border_one: np.ndarray  # border pixels of perimeter weight 1
    border_sqrt2: np.ndarray  # of weight sqrt 2
    border_corner: np.ndarray  # of weight (1 + sqrt 2) / 2


class Columns(NamedTuple):
    """The ``measure`` table's columns but Solidity, in the order of ``measure.object_schema``: one entry per label
    present, in increasing label order."""

    number: np.ndarray
    area: np.ndarray
    center_x: np.ndarray
    center_y: np.ndarray
    bbox_min_x: np.ndarray
    bbox_min_y: np.ndarray
    bbox_max_x: np.ndarray  # exclusive
    bbox_max_y: np.ndarray  # exclusive
    perimeter: np.ndarray
    major_axis_length: np.ndarray
    minor_axis_length: np.ndarray
    eccentricity: np.ndarray
    orientation: np.ndarray  # degrees
    equivalent_diameter: np.ndarray
    extent: np.ndarray
    integrated_intensity: np.ndarray
    mean_intensity: np.ndarray
    std_intensity: np.ndarray
    max_intensity: np.ndarray
    touches_border: np.ndarray


@numba.njit(nogil=True, cache=True)
def _sum_squares(m):
    """0^2 + 1^2 + ... + m^2 for m >= 0; for m < 0 the value that keeps S(b) - S(a - 1) = sum of d^2 over a..b."""
    return m * (m + 1) * (2 * m + 1) // 6


@numba.njit(nogil=True, cache=True)
def _accumulate(runs, n, intensity, exact, shape, planes, labels):
    """``Sums`` over the ``runs`` of labels 1..n (see the module docstring), in one pass that also counts the
    perimeter weight classes (``shape``; ``planes`` from ``_weight_planes``) and paints ``labels`` (if not empty).

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
    fx0 = runs.x0
    fx1 = runs.x1
    fid = runs.ids
    frs = runs.starts
    nw = planes.nw
    w1 = planes.weight_one
    w2 = planes.weight_sqrt2
    w3 = planes.weight_corner
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
    return Sums(
        area=area, x0=x0, y0=y0, xmin=xmin, xmax=xmax, ymax=ymax, sx=sx, sy=sy, sxx=sxx, syy=syy, sxy=sxy,
        touches=touches, intensity_sum=isum, deviation_sum=idev, deviation_squares=idev2, intensity_max=imax,
        border_one=c1, border_sqrt2=c2, border_corner=c3,
    )  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _columns(runs, n, touch, intensity, exact, planes, labels):
    """The table's ``Columns`` of the objects 1..n of ``runs``: the perimeter's weight planes (``touch`` as
    ``_weight_planes``'s), the ``Sums`` and what ``_derive`` makes of them, in one call from Python (numba types a
    named tuple of arrays in Python at each call from Python, some microseconds; between kernels it costs nothing)."""
    _weight_planes(runs, touch, intensity.shape[0], planes)
    return _derive(_accumulate(runs, n, intensity, exact, True, planes, labels))


@numba.njit(nogil=True, cache=True)
def _derive(sums):
    """The table's ``Columns`` (``measure.py``'s docstring) for the labels present, from ``_accumulate``'s ``Sums``."""
    area = sums.area
    x0 = sums.x0
    y0 = sums.y0
    xmin = sums.xmin
    xmax = sums.xmax
    ymax = sums.ymax
    sx = sums.sx
    sy = sums.sy
    sxx = sums.sxx
    syy = sums.syy
    sxy = sums.sxy
    m = 0
    for k in range(1, area.size):
        m += area[k] > 0
    c = Columns(
        number=np.empty(m, np.int64), area=np.empty(m, np.int64),
        center_x=np.empty(m, np.float64), center_y=np.empty(m, np.float64),
        bbox_min_x=np.empty(m, np.int32), bbox_min_y=np.empty(m, np.int32),
        bbox_max_x=np.empty(m, np.int32), bbox_max_y=np.empty(m, np.int32),
        perimeter=np.empty(m, np.float64), major_axis_length=np.empty(m, np.float64),
        minor_axis_length=np.empty(m, np.float64), eccentricity=np.empty(m, np.float64),
        orientation=np.empty(m, np.float64), equivalent_diameter=np.empty(m, np.float64),
        extent=np.empty(m, np.float64), integrated_intensity=np.empty(m, np.float64),
        mean_intensity=np.empty(m, np.float64), std_intensity=np.empty(m, np.float64),
        max_intensity=np.empty(m, np.float64), touches_border=np.empty(m, np.bool_),
    )  # fmt: skip
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
        isum = sums.intensity_sum[k]
        c.number[j] = k
        c.area[j] = a
        c.bbox_min_x[j] = xmin[k]
        c.bbox_min_y[j] = y0[k]
        c.bbox_max_x[j] = xmax[k] + 1
        c.bbox_max_y[j] = ymax[k] + 1
        c.center_x[j] = x0[k] + sx[k] / n
        c.center_y[j] = y0[k] + sy[k] / n
        c.perimeter[j] = sums.border_one[k] + _SQRT2 * sums.border_sqrt2[k] + _CORNER * sums.border_corner[k]
        c.major_axis_length[j] = 4 * math.sqrt(l1)
        c.minor_axis_length[j] = 4 * math.sqrt(l2)
        c.eccentricity[j] = eccentricity
        c.orientation[j] = math.degrees(orientation)
        c.equivalent_diameter[j] = math.sqrt(4 * n / math.pi)
        c.extent[j] = n / ((xmax[k] - xmin[k] + 1) * (ymax[k] - y0[k] + 1))
        c.integrated_intensity[j] = isum
        c.mean_intensity[j] = isum / n
        c.std_intensity[j] = math.sqrt(max(sums.deviation_squares[k] / n - (sums.deviation_sum[k] / n) ** 2, 0.0))
        c.max_intensity[j] = sums.intensity_max[k]
        c.touches_border[j] = sums.touches[k]
        j += 1
    return c
