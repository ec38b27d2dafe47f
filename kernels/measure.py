"""Per-object measurements with CellProfiler's names, and the per-frame summary of the image table.

One numba pass over the pixels (``nogil=True``, so frames can be measured on threads) accumulates, per label, the
pixel count, first and second moments of the coordinates, the bounding box, the perimeter weights, whether the object
touches the image edge, and the sum, shifted sum of squares and maximum of the intensity; it works run by run (a run
= consecutive pixels of one label in a row), so the coordinate sums are closed forms and only the intensity and the
border test are per pixel. The derived values are then computed with vectorised numpy.

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
    for corners, 0 otherwise), and the weights are summed.
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
    by the full scale of the image's type.
``TouchesBorder``
    True when the object has a pixel in the first or last row or column of the frame. (Not a CellProfiler
    measurement; CellProfiler discards such objects at identification when asked.)

Not computed (yet): Solidity, ConvexArea, FormFactor (= 4 pi Area / Perimeter^2, derive it from the table),
Compactness, EulerNumber, Feret diameters, radii, Zernike moments.

``summarize_frame`` gives the per-frame image-table values from the same accumulation (moments and perimeter
skipped). Objects under ``micronucleus_area`` pixels are micronuclei (including nuclear fragments), the others
nuclei:

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

import numba
import numpy as np
import polars as pl

DEFAULT_MICRONUCLEUS_AREA = 100

# skimage.measure.perimeter's weights, indexed by 1 * border(p) + 2 * (4-neighbour border pixels)
# + 10 * (diagonal border pixels).
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def object_schema(channel: str = "DNA") -> dict[str, pl.DataType]:
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
    return schema


@numba.njit(nogil=True, cache=True)
def _sum_squares(m):
    """0^2 + 1^2 + ... + m^2 for m >= 0; for m < 0 the value that keeps S(b) - S(a - 1) = sum of d^2 over a..b."""
    return m * (m + 1) * (2 * m + 1) // 6


@numba.njit(nogil=True, cache=True)
def _accumulate(labels, intensity, n, shape, weights):
    """One pass over the pixels, run by run: per-label sums for labels 1..n (see the module docstring).

    Each row is cut into runs of equal label; a run adds its length, its coordinate sums (closed forms) and its
    intensity sums (summed in registers first) to its label. Coordinates are taken relative to each object's first
    pixel, which keeps the second moments exact in int64 and free of cancellation. With ``shape`` False only the
    area, bounding box, border flag and intensity sums are accumulated.

    The perimeter needs, for every border pixel, the border flags of its 8 neighbours, so it runs one row behind:
    while row y is scanned (which sets the border flags of row y and lists its border pixels), the listed border
    pixels of row y - 1 are weighted.
    """
    h, w = labels.shape
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
    perimeter = np.zeros(n + 1, np.float64)
    touches = np.zeros(n + 1, np.bool_)
    i0 = np.zeros(n + 1, np.float64)
    isum = np.zeros(n + 1, np.float64)
    idev = np.zeros(n + 1, np.float64)
    idev2 = np.zeros(n + 1, np.float64)
    imax = np.zeros(n + 1, np.float64)
    # border flags of rows y - 2, y - 1, y (only read where the label matches, so never cleared), border pixels
    b_old = np.zeros(w, np.uint8)
    b_prev = np.zeros(w, np.uint8)
    b_cur = np.zeros(w, np.uint8)
    list_prev = np.empty(w, np.int64)
    list_cur = np.empty(w, np.int64)
    change = np.ones((w + 1 + 7) // 8 * 8, np.uint8)  # change[0] and change[w:] stay 1 (sentinels)
    change64 = change.view(np.uint64)
    n_prev = 0
    for y in range(h + 1):
        n_cur = 0
        if y < h:
            edge_row = y == 0 or y == h - 1
            row = labels[y]
            up = labels[max(y - 1, 0)]
            down = labels[min(y + 1, h - 1)]
            # change[x] = 1 where a run starts (a vectorisable pass), then hop from start to start a word at a time
            for x in range(1, w):
                change[x] = row[x] != row[x - 1]
            x1 = -1
            while True:
                x = x1 + 1
                if x >= w:
                    break
                x1 = x  # find the last pixel of the run starting at x
                while (x1 + 1) & 7 and not change[x1 + 1]:
                    x1 += 1
                if not change[x1 + 1]:
                    while change64[(x1 + 1) >> 3] == 0:
                        x1 += 8
                    while not change[x1 + 1]:
                        x1 += 1
                k = row[x]
                if k == 0:
                    continue
                length = x1 - x + 1
                if area[k] == 0:
                    x0[k] = x
                    y0[k] = y
                    xmin[k] = x
                    xmax[k] = x1
                    i0[k] = intensity[y, x]
                    imax[k] = intensity[y, x]
                area[k] += length
                if x < xmin[k]:
                    xmin[k] = x
                if x1 > xmax[k]:
                    xmax[k] = x1
                ymax[k] = y
                if edge_row or x == 0 or x1 == w - 1:
                    touches[k] = True
                ref = i0[k]
                s = 0.0
                d1 = 0.0
                d2 = 0.0
                mx = imax[k]
                for xx in range(x, x1 + 1):
                    v = np.float64(intensity[y, xx])
                    s += v
                    d = v - ref
                    d1 += d
                    d2 += d * d
                    if v > mx:
                        mx = v
                isum[k] += s
                idev[k] += d1
                idev2[k] += d2
                imax[k] = mx
                if shape:
                    a = x - x0[k]
                    b = x1 - x0[k]
                    dy = y - y0[k]
                    run_sx = (a + b) * length // 2
                    sx[k] += run_sx
                    sxx[k] += _sum_squares(b) - _sum_squares(a - 1)
                    sy[k] += length * dy
                    syy[k] += length * dy * dy
                    sxy[k] += dy * run_sx
                    # border pixels: the run's ends, and pixels whose upper or lower neighbour differs
                    for xx in range(x, x1 + 1):
                        border = edge_row | (xx == x) | (xx == x1) | (up[xx] != k) | (down[xx] != k)
                        b_cur[xx] = border
                        list_cur[n_cur] = xx
                        n_cur += border
        if shape and y > 0:
            # weights of the border pixels of row r = y - 1: neighbours in rows r - 1 (b_old), r (b_prev), r + 1
            r = y - 1
            for t in range(n_prev):
                xx = list_prev[t]
                k = labels[r, xx]
                code = 1
                if xx > 0 and labels[r, xx - 1] == k:
                    code += 2 * b_prev[xx - 1]
                if xx + 1 < w and labels[r, xx + 1] == k:
                    code += 2 * b_prev[xx + 1]
                if r > 0:
                    if labels[r - 1, xx] == k:
                        code += 2 * b_old[xx]
                    if xx > 0 and labels[r - 1, xx - 1] == k:
                        code += 10 * b_old[xx - 1]
                    if xx + 1 < w and labels[r - 1, xx + 1] == k:
                        code += 10 * b_old[xx + 1]
                if y < h:
                    if labels[y, xx] == k:
                        code += 2 * b_cur[xx]
                    if xx > 0 and labels[y, xx - 1] == k:
                        code += 10 * b_cur[xx - 1]
                    if xx + 1 < w and labels[y, xx + 1] == k:
                        code += 10 * b_cur[xx + 1]
                perimeter[k] += weights[code]
        b_old, b_prev, b_cur = b_prev, b_cur, b_old
        list_prev, list_cur = list_cur, list_prev
        n_prev = n_cur
    return area, x0, y0, xmin, xmax, ymax, sx, sy, sxx, syy, sxy, perimeter, touches, isum, idev, idev2, imax


def _validate(labels: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """Check the inputs. Returns contiguous arrays, the largest label, and for huge ids the ids of a compacted copy."""
    for name, a in (("labels", labels), ("intensity", intensity)):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (H, W), got {a.ndim}-D with shape {a.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if intensity.dtype == np.bool_ or not (
        np.issubdtype(intensity.dtype, np.integer) or np.issubdtype(intensity.dtype, np.floating)
    ):
        raise ValueError(f"intensity must be an integer or floating-point array, got dtype {intensity.dtype}")
    if labels.shape != intensity.shape:
        raise ValueError(f"labels {labels.shape} and intensity {intensity.shape} must have the same shape")
    labels = np.ascontiguousarray(labels)
    intensity = np.ascontiguousarray(intensity)
    hi = int(labels.max()) if labels.size else 0
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    ids = None
    if hi > labels.size:
        # Sparse huge ids: measure a compacted copy (the per-label arrays are sized by the largest id).
        ids, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape).astype(np.int32)
        if ids[0] != 0:
            labels += 1
            ids = np.concatenate([[0], ids])
        hi = len(ids) - 1
    return labels, intensity, int(hi), ids


def _run(labels: np.ndarray, intensity: np.ndarray, shape: bool):
    labels, intensity, n, ids = _validate(labels, intensity)
    acc = _accumulate(labels, intensity, n, shape, _PERIMETER_WEIGHTS)
    present = np.flatnonzero(acc[0][1:]) + 1
    numbers = present if ids is None else ids[present]
    return numbers, [a[present] for a in acc]


def measure(labels: np.ndarray, intensity: np.ndarray, channel: str = "DNA") -> pl.DataFrame:
    """Measure every object of a label image: one row per object, CellProfiler's column names.

    Parameters
    ----------
    labels : (H, W) integer array
        0 = background, objects > 0 (ids need not be consecutive; each id is one object even if disconnected).
    intensity : (H, W) integer or floating-point array
        The frame the intensities are measured on, in its raw units.
    channel : str
        Suffix of the intensity columns (``Intensity_MeanIntensity_<channel>``).

    Returns
    -------
    polars.DataFrame
        One row per label present, in increasing label order, with the columns of ``object_schema(channel)``;
        their definitions are in the module docstring. No objects: an empty table with the same columns.

    Raises
    ------
    ValueError
        If the arrays are not 2-D, differ in shape, have the wrong dtype, or labels are negative.
    """
    numbers, acc = _run(labels, intensity, shape=True)
    area, x0, y0, xmin, xmax, ymax, sx, sy, sxx, syy, sxy, perimeter, touches, isum, idev, idev2, imax = acc
    n = area.astype(np.float64)
    # n^2 x the central second moments, exact in int64 while n * (largest |dx|) < 2^31 (any object of a frame up
    # to 1,290 x 1,290, and every nucleus-sized object of any frame); beyond that, float64.
    exact = area * np.maximum(xmax - xmin, ymax - y0) < 2**31
    mxx_int = area * sxx - sx * sx  # wraps around where not exact; replaced below
    myy_int = area * syy - sy * sy
    fx = sx.astype(np.float64)
    fy = sy.astype(np.float64)
    mxx = np.where(exact, mxx_int, n * sxx - fx * fx)
    myy = np.where(exact, myy_int, n * syy - fy * fy)
    mxy = np.where(exact, area * sxy - sx * sy, n * sxy - fx * fy)
    dxy = np.where(exact, mxx_int - myy_int, mxx - myy)  # exactly 0 for a == c
    # skimage's inertia tensor is [[a, b], [b, c]] with a = var x, c = var y, b = -cov(x, y); here scaled by n^2.
    n2 = n * n
    half_sum = (mxx + myy) / (2 * n2)
    radius = np.hypot(dxy / 2, mxy) / n2
    l1 = np.maximum(half_sum + radius, 0.0)
    l2 = np.maximum(half_sum - radius, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0.0, 1.0)), 0.0)
    # 0.5 atan2(-2b, c - a), and skimage's +-pi/4 when a == c (tested exactly, on the integers).
    orientation = np.where(dxy == 0, np.where(mxy > 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(2.0 * mxy, -dxy))
    bbox_area = (xmax - xmin + 1) * (ymax - y0 + 1)
    mean_i = isum / n
    std_i = np.sqrt(np.maximum(idev2 / n - (idev / n) ** 2, 0.0))
    columns = [
        numbers,
        area,
        x0 + sx / n,
        y0 + sy / n,
        xmin,
        y0,
        xmax + 1,
        ymax + 1,
        perimeter,
        4 * np.sqrt(l1),
        4 * np.sqrt(l2),
        eccentricity,
        np.degrees(orientation),
        np.sqrt(4 * n / np.pi),
        n / bbox_area,
        isum,
        mean_i,
        std_i,
        imax,
        touches,
    ]
    schema = object_schema(channel)
    return pl.DataFrame(
        {name: pl.Series(name, col, dtype=dtype) for (name, dtype), col in zip(schema.items(), columns, strict=True)}
    )


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
    """
    _, acc = _run(labels, intensity, shape=False)
    area, touches, isum = acc[0], acc[12], acc[13]
    return _summary(area, touches, isum / np.maximum(area, 1), micronucleus_area, channel)


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
