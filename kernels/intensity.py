"""Intensity measurements of objects in any channel: CellProfiler's MeasureObjectIntensity, from a label image.

For each object (label > 0) of a label image and an intensity image of the same shape, with CellProfiler's names and
definitions (on the values as given: raw or illumination-corrected counts, not rescaled to [0, 1]):

- ``IntegratedIntensity``: the sum of the object's pixels;
- ``MeanIntensity``: the sum over its area;
- ``StdIntensity``: the population standard deviation (``numpy.std``), from the deviations from the mean (a second
  pass: the sum of squares less the squared sum loses digits at 16-bit means);
- ``MinIntensity``, ``MaxIntensity``;
- ``MedianIntensity``: the median (the mean of the two middle values of an even count, as ``numpy.median``).

Sums are in float64, one object's pixels in raster order. ``tests/test_intensity.py`` checks every value against
scikit-image's ``regionprops`` and ``cp_measure`` (CellProfiler's measurements in Python) on real frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import polars as pl

from nucleiscreen.kernels._workspace import Runs, per_thread, workspace
from nucleiscreen.kernels.runs import _label_runs

FEATURES = ("IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
            "MedianIntensity")


class ObjectIntensities(NamedTuple):
    """Per object 1..n (index i is object i + 1): its area, whether it touches the image's border, and the
    intensity features (``FEATURES``; NaN for an id with no pixel, or for a feature not asked for); and the mean of
    the whole image (``image_mean``, CellProfiler's MeasureImageIntensity ``MeanIntensity``)."""

    area: np.ndarray  # int64
    touches: np.ndarray  # bool
    integrated: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    median: np.ndarray
    image_mean: float

    def features(self) -> dict[str, np.ndarray]:
        """The features by their CellProfiler names (without the ``Intensity_`` prefix and channel suffix)."""
        return dict(zip(FEATURES, (self.integrated, self.mean, self.std, self.minimum, self.maximum, self.median)))


class _Flat(NamedTuple):
    """An illumination correction applied as values are read, ``b0 + (raw - background) * inverse``
    (``kernels/illumination.py``); ``on`` False reads the values as they are."""

    background: np.ndarray
    inverse: np.ndarray
    b0: float
    on: bool


class _Sums(NamedTuple):
    area: np.ndarray
    total: np.ndarray
    low: np.ndarray
    high: np.ndarray
    touches: np.ndarray


_NO_MAP = np.zeros((1, 1), np.float32)


@numba.njit(nogil=True, cache=True, inline="always")
def _value(image, flat, y, x):
    v = np.float64(image[y, x])
    if flat.on:
        v = flat.b0 + (v - flat.background[y, x]) * flat.inverse[y, x]
    return v


@numba.njit(nogil=True, cache=True, fastmath=True)
def _frame_sum(image, flat):
    """The sum of the whole image's values (corrected as read), a row at a time in loops the compiler vectorises
    (fastmath: the sum's order may change, in float64)."""
    h, w = image.shape
    total = 0.0
    for y in range(h):
        row = 0.0
        if flat.on:
            background, inverse = flat.background[y], flat.inverse[y]
            for x in range(w):
                row += (np.float64(image[y, x]) - background[x]) * inverse[x]
            total += row + flat.b0 * w
        else:
            for x in range(w):
                row += np.float64(image[y, x])
            total += row
    return total


@numba.njit(nogil=True, cache=True, inline="always")
def _run_values(image, flat, y, x0, x1, out):
    """The values of pixels x0..x1 of row y (corrected as read) into ``out[:x1 - x0 + 1]``."""
    row = image[y]
    if flat.on:
        background, inverse, b0 = flat.background[y], flat.inverse[y], flat.b0
        for x in range(x0, x1 + 1):
            out[x - x0] = b0 + (np.float64(row[x]) - background[x]) * inverse[x]
    else:
        for x in range(x0, x1 + 1):
            out[x - x0] = np.float64(row[x])


@numba.njit(nogil=True, cache=True)
def _run_sums(runs, n, image, flat, sums):
    """One pass over the objects' runs: each object's area, sum, extremes and border contact (a run's values are
    read into a row buffer first, so the loops over them vectorise)."""
    area, total, low, high, touches = sums.area, sums.total, sums.low, sums.high, sums.touches
    h, w = image.shape
    buf = np.empty(w)
    for y in range(h):
        edge_row = y == 0 or y == h - 1
        for r in range(runs.starts[y], runs.starts[y + 1]):
            k = runs.ids[r]
            if k <= 0 or k > n:
                continue
            x0, x1 = runs.x0[r], runs.x1[r]
            if edge_row or x0 == 0 or x1 == w - 1:
                touches[k] = True
            m = x1 - x0 + 1
            _run_values(image, flat, y, x0, x1, buf)
            t, lo, hi = 0.0, buf[0], buf[0]
            for i in range(m):
                t += buf[i]
                lo = min(lo, buf[i])
                hi = max(hi, buf[i])
            area[k] += m
            total[k] += t
            low[k] = min(low[k], lo)
            high[k] = max(high[k], hi)


@numba.njit(nogil=True, cache=True)
def _run_areas(runs, n, h, w, area, touches):
    """Each object's area and border contact, from its runs alone (no pixel read)."""
    for y in range(h):
        edge_row = y == 0 or y == h - 1
        for r in range(runs.starts[y], runs.starts[y + 1]):
            k = runs.ids[r]
            if 0 < k <= n:
                area[k] += runs.x1[r] - runs.x0[r] + 1
                if edge_row or runs.x0[r] == 0 or runs.x1[r] == w - 1:
                    touches[k] = True


@numba.njit(nogil=True, cache=True)
def _gather(runs, n, image, flat, starts, values):
    """The objects' values (corrected as read), grouped by object: object k's are ``values[starts[k]:starts[k+1]]``."""
    fill = starts.copy()
    for y in range(image.shape[0]):
        for r in range(runs.starts[y], runs.starts[y + 1]):
            k = runs.ids[r]
            if 0 < k <= n:
                _run_values(image, flat, y, runs.x0[r], runs.x1[r], values[fill[k]:])
                fill[k] += runs.x1[r] - runs.x0[r] + 1


@numba.njit(nogil=True, cache=True)
def _segment_stats(values, starts, total, low, high, squares):
    """Sum, extremes and sum of squared deviations from the mean of each object's (contiguous) values."""
    for k in range(1, starts.size - 1):
        seg = values[starts[k]:starts[k + 1]]
        if seg.size == 0:
            continue
        t, lo, hi = 0.0, seg[0], seg[0]
        for v in seg:
            t += v
            lo = min(lo, v)
            hi = max(hi, v)
        centre = t / seg.size
        sq = 0.0
        for v in seg:
            sq += (v - centre) * (v - centre)
        total[k], low[k], high[k], squares[k] = t, lo, hi, sq


@numba.njit(nogil=True, cache=True)
def _kth(values, k, lo, hi, counts, buf):
    """The k-th smallest (0-based) of ``values``, all within [lo, hi]: a histogram of 1,024 bins finds the bin that
    holds it, and only that bin's values are sorted (a quarter of the time of numpy's median here)."""
    nb = counts.size
    counts[:] = 0
    scale = (nb - 1) / (hi - lo)
    for v in values:
        counts[min(nb - 1, int((v - lo) * scale))] += 1
    below = 0
    b = 0
    for b in range(nb):
        if below + counts[b] > k:
            break
        below += counts[b]
    m = 0
    for v in values:
        if min(nb - 1, int((v - lo) * scale)) == b:
            buf[m] = v
            m += 1
    return np.sort(buf[:m])[k - below]


@numba.njit(nogil=True, cache=True)
def _medians(values, starts, low, high, out):
    """Each object's median (``numpy.median``'s: the mean of the two middle values of an even count)."""
    counts = np.zeros(1024, np.int64)
    buf = np.empty(values.size, np.float64)
    for k in range(1, starts.size - 1):
        a, b = starts[k], starts[k + 1]
        n = b - a
        if n == 0:
            continue
        if high[k] == low[k]:
            out[k] = low[k]
            continue
        seg = values[a:b]
        upper = _kth(seg, n // 2, low[k], high[k], counts, buf)
        out[k] = upper if n % 2 else 0.5 * (upper + _kth(seg, n // 2 - 1, low[k], high[k], counts, buf))


def _flat_of(image: np.ndarray, illumination: tuple[np.ndarray, np.ndarray, float] | None) -> _Flat:
    if illumination is None:
        return _Flat(_NO_MAP, _NO_MAP, 0.0, False)
    background, inverse, b0 = illumination
    if background.shape != image.shape or inverse.shape != image.shape:
        raise ValueError(f"illumination function {inverse.shape} and image {image.shape} differ in shape")
    return _Flat(np.ascontiguousarray(background, np.float32), np.ascontiguousarray(inverse, np.float32), float(b0),
                 True)


def frame_mean(image: np.ndarray, illumination: tuple[np.ndarray, np.ndarray, float] | None = None) -> float:
    """The mean of a whole image (CellProfiler's MeasureImageIntensity ``MeanIntensity``), corrected as read with
    ``illumination`` (as for ``object_intensities``)."""
    image = np.ascontiguousarray(image, np.float32 if image.dtype == np.float16 else None)
    return _frame_sum(image, _flat_of(image, illumination)) / image.size if image.size else float("nan")


def run_intensities(runs: Runs, n: int, image: np.ndarray, median: bool = True, spread: bool = True,
                    illumination: tuple[np.ndarray, np.ndarray, float] | None = None) -> ObjectIntensities:
    """``object_intensities`` of objects given as runs (``kernels/_workspace.Runs``, ids 1..``n``), as the fused
    measurement kernels hold them: only the objects' pixels are read (the whole image once more for its mean)."""
    image = np.ascontiguousarray(image, np.float32 if image.dtype == np.float16 else None)
    flat = _flat_of(image, illumination)
    sums = _Sums(np.zeros(n + 1, np.int64), np.zeros(n + 1), np.full(n + 1, np.inf), np.full(n + 1, -np.inf),
                 np.zeros(n + 1, np.bool_))
    area, total, low, high, touches = sums
    squares = np.full(n + 1, np.nan)
    medians = np.full(n + 1, np.nan)
    if spread or median:  # the objects' values gathered once; everything else from them, contiguous
        _run_areas(runs, n, *image.shape, area, touches)
        starts = np.concatenate([[0], np.cumsum(area)]).astype(np.int64)
        values = np.empty(int(starts[-1]))
        _gather(runs, n, image, flat, starts, values)
        squares[:] = 0.0
        _segment_stats(values, starts, total, low, high, squares)
        if median:
            _medians(values, starts, low, high, medians)
    else:  # the image table alone: one pass, sums and extremes
        _run_sums(runs, n, image, flat, sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / area
    empty = area == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(squares / area) if spread else np.full(n + 1, np.nan)
    low[empty] = high[empty] = np.nan
    total = np.where(empty, np.nan, total)
    image_mean = frame_mean(image, illumination)
    return ObjectIntensities(area[1:], touches[1:], total[1:], mean[1:], std[1:], low[1:], high[1:], medians[1:],
                             image_mean)


def object_intensities(labels: np.ndarray, image: np.ndarray, n: int | None = None, median: bool = True,
                       spread: bool = True,
                       illumination: tuple[np.ndarray, np.ndarray, float] | None = None) -> ObjectIntensities:
    """The intensity features of objects 1..``n`` of ``labels`` measured on ``image``.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background, objects 1..n (an id may have no pixel; ids above ``n`` are ignored).
    image : (H, W) integer or floating-point array
        The channel measured.
    n : int, optional
        The number of objects (default: the largest label).
    median : bool
        Compute ``MedianIntensity`` (its pixels grouped and sorted per object); NaN without.
    spread : bool
        Compute ``StdIntensity`` (a second pass; with ``median`` too); NaN without: the sums, extremes and means
        take one pass over the objects.
    illumination : (background, inverse, b0), optional
        Measure ``b0 + (image - background) * inverse`` (``IlluminationFunction.at_frame_size``'s arrays and
        ``b0``) without making that image: the correction is applied to each value as it is read.

    Returns
    -------
    ObjectIntensities
    """
    if labels.ndim != 2 or labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} must be 2-D arrays of one shape")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    n = int(labels.max(initial=0)) if n is None else int(n)
    runs = per_thread(workspace, *labels.shape).runs
    if labels.size:
        _label_runs(np.ascontiguousarray(labels, np.int32 if labels.dtype.itemsize > 4 else None), runs)
    else:
        runs = Runs(*(np.zeros(1, np.int32) for _ in range(3)), starts=np.zeros(labels.shape[0] + 1, np.int64))
    return run_intensities(runs, n, image, median, spread, illumination)


def channel_columns(channel: str, objects: bool, features: tuple[str, ...] = FEATURES) -> dict[str, pl.DataType]:
    """The columns ``measure_channel`` gives for a channel: the image table's (the frame's mean and its nuclei's
    mean intensity) or, with ``objects``, the object table's (``Intensity_<feature>_<channel>``)."""
    if objects:
        return {f"Intensity_{f}_{channel}": pl.Float64 for f in features}
    return {f"Intensity_MeanIntensity_{channel}": pl.Float64,
            f"Mean_Nuclei_Intensity_MeanIntensity_{channel}": pl.Float64}


def measure_channel(runs: Runs, n: int, image: np.ndarray, channel: str, micronucleus_area: int, objects: bool,
                    features: tuple[str, ...] = FEATURES,
                    illumination: tuple[np.ndarray, np.ndarray, float] | None = None) -> tuple[dict, dict | None]:
    """A channel measured in the nuclei ``runs`` (objects 1..``n``): the image-table values (the frame's mean
    intensity, CellProfiler's MeasureImageIntensity ``Intensity_MeanIntensity_<channel>``, and the mean over the
    nuclei counted in ``Mean_Nuclei_AreaShape_Area`` -- at least ``micronucleus_area`` px, off the border -- of their
    ``MeanIntensity``) and, with ``objects``, the ``features`` per nucleus as columns (``channel_columns``); one pass
    over the nuclei and one over the image for the image table alone. ``illumination``: as for
    ``object_intensities``."""
    stats = run_intensities(runs, n, image, median=objects and "MedianIntensity" in features,
                            spread=objects and "StdIntensity" in features, illumination=illumination)
    kept = (stats.area >= micronucleus_area) & ~stats.touches
    summary = {f"Intensity_MeanIntensity_{channel}": stats.image_mean,
               f"Mean_Nuclei_Intensity_MeanIntensity_{channel}": float(stats.mean[kept].mean()) if kept.any()
               else None}
    if not objects:
        return summary, None
    values = stats.features()
    return summary, {f"Intensity_{f}_{channel}": values[f] for f in features}
