"""Intensity normalization of raw frames for the network: the one implementation trainer and engine share.

The seed lab clipped each raw 16-bit Hoechst frame at its 0.1 and 99.9 percentiles and rescaled to [0, 1]. We do the
same from a histogram (O(pixels), no sort), with one guard the lab did not need for its 50 hand-picked frames: a frame
with no nuclei (a well where every cell died — count fold change < 0.1 is a real phenotype in this screen) would have
its background noise stretched over the full range, and a U-Net then sees nuclei in noise. So the range is floored:

    lo = P_low(frame),  hi = P_high(frame)
    range = max(hi - lo, min_range, (min_ratio - 1) * lo)
    out = clip((frame - lo) / range, 0, 1)

``min_ratio`` asks that the brightest objects be at least that many times the background level (the camera offset
plus the dim cytoplasm glow); a frame of background alone stays dark instead of being stretched. Frames that were
already normalized to 8 bits (the annotated PNGs, whose low percentile is 0) are not affected by it. ``min_range`` is
an absolute floor in raw units for cameras whose offset has been subtracted.

Percentiles here are the lower (inverted-CDF) percentile: the smallest value v with at least q % of the pixels <= v.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Parameters of the percentile normalization (stored in the model card so the engine repeats training's)."""

    method: str = "percentile"
    low: float = 0.1
    high: float = 99.9
    min_ratio: float = 3.0  # the range is at least (min_ratio - 1) x the low percentile (module docstring)
    min_range: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        if d.get("method", "percentile") != "percentile":
            raise ValueError(f"unknown normalization method {d.get('method')!r} (expected 'percentile')")
        d = {"min_ratio": d["min_contrast"], **d} if "min_contrast" in d else d  # its name in cards before 0.2
        return cls(**{k: d[k] for k in ("method", "low", "high", "min_ratio", "min_range") if k in d})


@numba.njit(nogil=True, cache=True)
def _histogram(flat, nbins):
    # Two int32 histograms, even and odd pixels: neighbouring pixels often share a value, and one histogram would
    # make each increment wait for the last (measured 0.49 against 0.66 ms for a 1104^2 uint16 frame).
    even = np.zeros(nbins, np.int32)
    odd = np.zeros(nbins, np.int32)
    n = flat.size
    for i in range(0, n - 1, 2):
        even[flat[i]] += 1
        odd[flat[i + 1]] += 1
    if n % 2:
        even[flat[n - 1]] += 1
    hist = np.empty(nbins, np.int64)
    for v in range(nbins):
        hist[v] = even[v] + odd[v]
    return hist


@numba.njit(nogil=True, cache=True)
def _percentile_bins(hist, n, q_low, q_high):
    need_low = max(1, int(np.ceil(q_low / 100.0 * n)))
    need_high = max(1, int(np.ceil(q_high / 100.0 * n)))
    lo = -1
    hi = -1
    acc = 0
    for v in range(hist.size):
        acc += hist[v]
        if lo < 0 and acc >= need_low:
            lo = v
        if acc >= need_high:
            hi = v
            break
    return lo, hi


@numba.njit(nogil=True, cache=True)
def _apply(flat, lo, scale, out):
    for i in range(flat.size):
        x = (flat[i] - lo) * scale
        if x < 0.0:
            x = 0.0
        elif x > 1.0:
            x = 1.0
        out[i] = x


def histogram(frame: np.ndarray) -> np.ndarray | None:
    """Pixel counts of every value of a uint8 (256 bins) or uint16 (65,536 bins) frame, int64; None for other
    dtypes. One pass that the percentiles here and the frame quality (``kernels/quality.py``) both read."""
    if frame.dtype not in (np.uint8, np.uint16):
        return None
    return _histogram(np.ascontiguousarray(frame).ravel(), 256 if frame.dtype == np.uint8 else 65536)


def percentiles(frame: np.ndarray, low: float = 0.1, high: float = 99.9,
                hist: np.ndarray | None = None) -> tuple[float, float]:
    """Lower percentiles ``low`` and ``high`` (in %) of a 2-D frame; from its ``histogram`` for uint8 and uint16
    frames (given, or made here). ValueError for an empty frame, which has none."""
    if frame.size == 0:
        raise ValueError(f"an empty frame (shape {frame.shape}) has no percentiles")
    if hist is None:
        hist = histogram(frame)
    if hist is not None:
        lo, hi = _percentile_bins(hist, frame.size, float(low), float(high))
        return float(lo), float(hi)
    flat = np.asarray(frame, np.float64).ravel()
    return (float(np.percentile(flat, low, method="inverted_cdf")),
            float(np.percentile(flat, high, method="inverted_cdf")))


def normalization_range(frame: np.ndarray, params: Normalization = Normalization(),
                        hist: np.ndarray | None = None) -> tuple[float, float]:
    """``(lo, scale)`` of the module docstring's formula, ``out = clip((frame - lo) * scale, 0, 1)`` with
    ``scale = 1 / range``: what ``normalize`` applies, for kernels that normalize the pixels they read on the fly."""
    lo, hi = percentiles(frame, params.low, params.high, hist)
    return lo, 1.0 / max(hi - lo, params.min_range, (params.min_ratio - 1.0) * lo, 1e-6)


def normalize(
    frame: np.ndarray,
    params: Normalization = Normalization(),
    out: np.ndarray | None = None,
    dtype: type = np.float32,
    hist: np.ndarray | None = None,
) -> np.ndarray:
    """Map a raw frame to the network's input range [0, 1].

    Parameters
    ----------
    frame : (H, W) uint8, uint16 or float array
        One raw frame.
    params : Normalization
        Percentiles and range floors (see the module docstring for the formula).
    out : (H, W) float32 or float16 array, optional
        Written in place when given (e.g. a slice of a batch buffer).
    dtype : numpy dtype
        Output dtype when ``out`` is not given: float32 (default) or float16.
    hist : array, optional
        The frame's ``histogram``, when the caller has it already.

    Returns
    -------
    (H, W) array of ``dtype`` with values in [0, 1].
    """
    if frame.ndim != 2:
        raise ValueError(f"normalize expects a 2-D frame, got shape {frame.shape}")
    if not (np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)):
        raise ValueError(f"normalize expects an integer or float frame, got dtype {frame.dtype}")
    if out is None:
        out = np.empty(frame.shape, dtype)
    elif out.shape != frame.shape or out.dtype not in (np.float32, np.float16):
        raise ValueError(f"out must be float32/float16 of shape {frame.shape}, got {out.dtype} {out.shape}")
    lo, scale = normalization_range(frame, params, hist)
    src = np.ascontiguousarray(frame)
    if src.dtype not in (np.uint8, np.uint16, np.float32):
        src = src.astype(np.float32)
    if out.dtype == np.float32 and out.flags.c_contiguous:
        _apply(src.ravel(), lo, scale, out.reshape(-1))
    else:  # numba has no float16 arithmetic on the CPU: go through float32
        tmp = np.empty(frame.shape, np.float32)
        _apply(src.ravel(), lo, scale, tmp.reshape(-1))
        out[...] = tmp
    return out
