"""The classic reference method: a CellProfiler-style IdentifyPrimaryObjects without deep learning.

Every evaluation report puts the networks next to it, so the deep-learning gain is always visible. The steps follow
CellProfiler's IdentifyPrimaryObjects for nuclei ("Otsu, two classes, global" threshold, declumping by shape); sigma 1
and min_distance 15 were picked on the lab's training frames from sigma {1, 2} x min_distance {5, 9, 15}:

1. normalize the raw frame with the engine's own ``normalize`` (percentile clipping, the same as the networks get);
2. smooth with a Gaussian of ``sigma`` px;
3. threshold at Otsu's level of the smoothed image (a 256-bin histogram), fill holes;
4. declump: the Euclidean distance transform of the mask, smoothed, has one marker per local maximum at least
   ``min_distance`` px from a higher one; a watershed of the negated distance from those markers, inside the mask,
   splits touching nuclei;
5. drop objects under ``min_area`` px (the default keeps micronuclei, as the networks do).

Needs SciPy and scikit-image (the ``train`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import Normalization, normalize


@dataclass(frozen=True)
class ClassicParams:
    sigma: float = 1.0  # Gaussian smoothing before thresholding, px
    min_distance: int = 15  # declumping: minimum distance between two nuclei's centres, px (CX7 nuclei: ~44 px wide)
    min_area: int = 4  # px; smaller objects are dropped


def otsu_level(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` from a histogram: the level maximizing the between-class variance."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def segment_classic(raw: np.ndarray, params: ClassicParams = ClassicParams(),
                    norm: Normalization = Normalization()) -> np.ndarray:
    """Label image (int32, 0 background) of a raw nuclei frame by the classic pipeline of the module docstring."""
    try:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed
    except ImportError:
        raise UserError("the classic baseline needs SciPy and scikit-image: "
                        "pip install 'nucleiscreen[train]'") from None
    if raw.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {raw.shape}")
    image = ndi.gaussian_filter(normalize(raw, norm).astype(np.float32), params.sigma)
    if float(image.max()) <= 0.0:
        return np.zeros(raw.shape, np.int32)
    mask = ndi.binary_fill_holes(image > otsu_level(image))
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    cc, _ = ndi.label(mask, structure=np.ones((3, 3)))
    peaks = peak_local_max(distance, min_distance=params.min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(raw.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without a peak (tiny or flat) still get one marker, so no object is lost to declumping.
    missing = np.setdiff1d(np.unique(cc[mask]), np.unique(cc[tuple(peaks.T)]) if len(peaks) else [])
    if missing.size:
        centres = ndi.maximum_position(distance, cc, missing)
        markers[tuple(np.array(centres).T)] = np.arange(len(peaks) + 1, len(peaks) + 1 + missing.size)
    labels = watershed(-distance, markers, mask=mask).astype(np.int32)
    areas = np.bincount(labels.ravel())
    labels[(areas < params.min_area)[labels]] = 0
    return labels
