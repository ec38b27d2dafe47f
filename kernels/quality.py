"""Per-frame image quality, with CellProfiler's MeasureImageQuality names and definitions.

CellProfiler works on intensities scaled to [0, 1] by the image's bit depth (a 16-bit frame is divided by 65535), so
for a raw frame ``x`` of an integer dtype with maximum value ``M``:

- ``ImageQuality_FocusScore_DNA`` = var(x / M) / mean(x / M) = var(x) / (M * mean(x)), the normalized variance over the
  whole frame (population variance); 0 for a frame whose mean is 0. Blur lowers it: compare frames of one screen.
- ``ImageQuality_PercentMaximal_DNA`` = 100 * (pixels equal to the frame's maximum) / pixels: saturation shows as a
  plateau of pixels at the maximum.
Float frames are taken as already scaled (M = 1).
"""

from __future__ import annotations

import numba
import numpy as np

QUALITY_COLUMNS = ("ImageQuality_FocusScore_DNA", "ImageQuality_PercentMaximal_DNA")


@numba.njit(nogil=True, cache=True)
def _moments(flat):
    s = 0.0
    s2 = 0.0
    top = flat[0]
    at_top = 0
    for v in flat:
        f = float(v)
        s += f
        s2 += f * f
        if v > top:
            top = v
            at_top = 1
        elif v == top:
            at_top += 1
    return s, s2, at_top


def frame_quality(frame: np.ndarray) -> dict[str, float]:
    """Focus score and percent maximal of one 2-D frame (see the module docstring)."""
    if frame.ndim != 2 or frame.size == 0:
        raise ValueError(f"frame_quality expects a non-empty 2-D frame, got shape {frame.shape}")
    scale = float(np.iinfo(frame.dtype).max) if np.issubdtype(frame.dtype, np.integer) else 1.0
    s, s2, at_top = _moments(np.ascontiguousarray(frame).ravel())
    n = frame.size
    mean = s / n
    var = max(s2 / n - mean * mean, 0.0)
    return {
        "ImageQuality_FocusScore_DNA": var / (scale * mean) if mean > 0 else 0.0,
        "ImageQuality_PercentMaximal_DNA": 100.0 * at_top / n,
    }
