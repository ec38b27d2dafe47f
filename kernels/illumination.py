"""Illumination correction: a flat field and a background from a sample of frames, and their application.

The anchor is CellProfiler's CorrectIlluminationCalculate (Regular intensities, All images of a group, the mean image
smoothed -- by a median filter in the Broad's Cell Painting pipelines, or by its "Fit Polynomial" option, a
quadratic -- and rescaled so that its minimum is 1) and CorrectIlluminationApply (Divide), as those pipelines use
them per plate and channel. Three changes, each measured (``docs/illumination.md``; the figures there are the worst
error of the flat field over the field against the true vignetting, 30 % fall-off, on simulated frames):

- *A background.* A camera adds an offset that the illumination does not scale, while the dim glow every frame has
  (out-of-focus light, autofluorescence) is scaled like the specimen. Dividing raw intensities, offset included,
  leaves the corners under-corrected by the offset's share (9 % across a field with the CX7's offset of ~300 counts
  and a dim stain). Here each pixel's background -- the ``BACKGROUND_PERCENTILE``th percentile of its values over the
  sample: at each pixel most frames show no cell -- is taken off, and a frame is corrected as

      corrected = b0 + (raw - background) / flat          (flat >= 1: 1 at the dimmest part of the field)

  where ``b0`` is the background's minimum: the background comes out level at the value it has in the dimmest part
  of the field, a pixel there keeps its raw value and units (raw counts, offset included), and identical objects have
  identical intensities wherever they are in the field (BaSiC's darkfield plays the background's part).
- *The specimen's mean, not the frames' mean.* A sample of a few hundred frames does not cover the field evenly: the
  plain mean image carries where the sampled cells happened to lie (27-40 % error with 64-256 frames, median filter or
  polynomial alike). The flat field is estimated from each pixel's mean over the frames where the specimen lights it
  (its value above the background by more than a quarter of the signal there: the threshold follows the estimate,
  three rounds, else partly lit cells count only where the field is bright), which does not depend on how often that
  is: 1-3 % from 64 frames up.
- *A coarse grid.* Flat field and background are smooth, so each frame is block-averaged by ``BLOCK`` px first; the
  quadratic is fitted on the grid (weighted by how many frames lit each cell), kept at its size
  (``IlluminationFunction``) and upsampled bilinearly where it is applied. The Broad's pipelines downsample 4x for
  the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from nucleiscreen.kernels.resize import resize

BLOCK = 8  # px: the grid's cell
DEGREE = 2  # of the fitted polynomial (CellProfiler's Fit Polynomial is a quadratic)
BACKGROUND_PERCENTILE = 10.0  # over the sample's frames, per grid cell
LIT = 0.25  # a cell is lit by the specimen in a frame when above its background by this share of the typical signal
SPECIMEN = 10.0  # the typical signal must exceed this many times the block means' noise, else the function is flat


@numba.njit(nogil=True, cache=True)
def _block_mean(image, block, out):
    gh, gw = out.shape
    h, w = image.shape
    for gy in range(gh):
        for gx in range(gw):
            s = 0.0
            n = 0
            for y in range(gy * block, min(h, (gy + 1) * block)):
                for x in range(gx * block, min(w, (gx + 1) * block)):
                    s += image[y, x]
                    n += 1
            out[gy, gx] = s / n


@numba.njit(nogil=True, cache=True)
def _apply(raw, background, flat_inverse, b0, out):
    h, w = raw.shape
    for y in range(h):
        for x in range(w):
            out[y, x] = b0 + (raw[y, x] - background[y, x]) * flat_inverse[y, x]


@dataclass(frozen=True)
class IlluminationFunction:
    """A flat field (``flat``, >= 1) and a background on a coarse grid, for frames of ``shape``; ``b0``: the level
    the background is corrected to (module docstring)."""

    flat: np.ndarray  # float32 (grid rows, grid columns)
    background: np.ndarray  # float32, the same grid
    shape: tuple[int, int]
    b0: float

    def at_frame_size(self) -> tuple[np.ndarray, np.ndarray]:
        """(background, 1 / flat) at the frames' size (float32): what ``correct`` takes."""
        return resize(self.background, self.shape), (1.0 / resize(self.flat, self.shape)).astype(np.float32)

    @property
    def falloff(self) -> float:
        """How much dimmer the dimmest part of the field is than the brightest (0: flat)."""
        return float(1.0 - 1.0 / self.flat.max())


def block_mean(frame: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """A frame averaged over ``block`` x ``block`` px (float64; partial blocks at the edges averaged over what they
    hold): how each sampled frame enters ``illumination_function``."""
    if frame.ndim != 2 or frame.size == 0:
        raise ValueError(f"block_mean expects a non-empty 2-D frame, got shape {frame.shape}")
    h, w = frame.shape
    out = np.empty((-(-h // block), -(-w // block)), np.float64)
    _block_mean(np.ascontiguousarray(frame), block, out)
    return out


def polynomial_fit(image: np.ndarray, weight: np.ndarray | None = None, degree: int = DEGREE) -> np.ndarray:
    """The (weighted) least-squares fit of a 2-D polynomial of total degree ``degree`` to an image, its coordinates
    scaled to [-1, 1]."""
    h, w = image.shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = np.stack([x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)], -1).reshape(h * w, -1)
    root = np.sqrt(np.ones(h * w) if weight is None else weight.reshape(-1).astype(np.float64))
    coef, *_ = np.linalg.lstsq(terms * root[:, None], image.reshape(-1) * root, rcond=None)
    return (terms @ coef).reshape(h, w)


def illumination_function(grids: np.ndarray, shape: tuple[int, int]) -> IlluminationFunction:
    """The flat field and background of a sample of frames of ``shape`` (module docstring).

    Parameters
    ----------
    grids : (frames, grid rows, grid columns) array
        Each sampled frame's ``block_mean``.
    shape : (H, W)
        The frames' size.
    """
    if grids.ndim != 3 or grids.shape[0] == 0:
        raise ValueError(f"illumination_function expects a stack of frame grids, got shape {grids.shape}")
    raw_background = np.percentile(grids, BACKGROUND_PERCENTILE, axis=0)
    above = grids - raw_background
    background = polynomial_fit(raw_background)
    b0 = float(background.min())
    # the block means' noise, from the background's spread (the 10th to 20th percentile: Gaussian 0.44 sigma), and the
    # specimen's typical level above the background: at the 90th percentile, or the 99th where the specimen is sparse
    # (it lights fewer than a tenth of the frames at a pixel)
    noise = np.median(np.percentile(grids, 20, axis=0) - raw_background) / 0.44
    typical = 0.0
    for q in (90, 99):
        typical = np.median(np.percentile(grids, q, axis=0) - raw_background)
        if typical > SPECIMEN * noise:
            break
    level = np.full(raw_background.shape, typical if typical > SPECIMEN * noise else 0.0)
    fit = None
    for _ in range(3):  # the threshold follows the illumination: a dim corner's lit cells are counted as its bright
        lit = above > LIT * level  # centre's are (else partly lit cells pass only where it is bright)
        count = lit.sum(0)
        if not level.min() > 0 or (count > 0).mean() < 0.5:  # too little specimen above the background to tell
            break
        fit = polynomial_fit(np.where(count > 0, (above * lit).sum(0) / np.maximum(count, 1), 0.0), count)
        level = fit
    if fit is None or not fit.min() > 0:  # no specimen, or a fit that crosses zero: nothing to correct
        fit = np.ones(raw_background.shape)
    return IlluminationFunction((fit / fit.min()).astype(np.float32), background.astype(np.float32), tuple(shape), b0)


def correct(raw: np.ndarray, background: np.ndarray, flat_inverse: np.ndarray, b0: float) -> np.ndarray:
    """``b0 + (raw - background) / flat`` (float32), with ``IlluminationFunction.at_frame_size()``'s arrays."""
    if raw.shape != flat_inverse.shape or raw.shape != background.shape:
        raise ValueError(f"frame {raw.shape} and illumination function {flat_inverse.shape} differ in shape")
    out = np.empty(raw.shape, np.float32)
    _apply(np.ascontiguousarray(raw), np.ascontiguousarray(background, np.float32),
           np.ascontiguousarray(flat_inverse, np.float32), float(b0), out)
    return out
