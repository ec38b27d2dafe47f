"""The object filter: small objects that barely stand out from their surroundings are erased, slivers at the frame's
edge too, and the small objects that remain are grown into the bright pixels around them.

A network that finds micronuclei at full resolution also finds the faint specks beside them, which the seed lab's
annotators did not outline (on the lab's validation frames, 60 of the 90 unmatched predictions under 300 px of such a
network lie on no annotated object, and they are fainter than the annotated spots). How far an object stands out is
measured on the normalized frame (the network's input, ``nucleiscreen.kernels.normalize``, so the unit is the frame's
0.1-99.9 percentile range):

    contrast(o) = mean of the image over o
                  - median of the image over the background pixels (label 0) between o's bounding box grown by
                    ``INNER`` px and grown by ``OUTER`` px (clipped to the frame)

Objects of fewer than ``max_area`` px whose contrast is under ``min_contrast`` are erased from the class map (their
pixels become background) before the instances are made again, so a faint speck inside a nucleus's hole ends up
filled by the nucleus, exactly as if the network had not drawn it. Objects with no background pixel in that ring are
kept. The threshold is a property of the trained network and the annotation it learnt; the trainer calibrates it on
training frames and writes it to the model card (``postprocessing.min_contrast``), and the engine applies it.

The same step erases *edge slivers*: objects that touch the frame's edge and have fewer than ``min_edge_area`` px.
The lab's annotators outlined the nuclei cut by the frame's edge but not the slivers of them: of the 139 annotated
objects touching the edge of the 30 training frames one is under 50 px (31 px), while a network draws every sliver it
sees (on those frames all 11 edge objects under 38 px of the shipped network lie on no annotated object). Like the
contrast threshold it is calibrated on training frames (``postprocessing.min_edge_area``; 0: none).

Then the small objects that remain (fewer than ``grow_area`` px, with a background ring and a positive contrast) are
*grown* by one ring of pixels: each background pixel of the class map next to such an object (8-connected) and to no
other object or unclaimed boundary pixel, whose image value is at least

    level(o) = background(o) + grow_level * contrast(o)    (background(o): the ring's median above)

becomes a boundary pixel of the class map, which ``instances_from_classes`` then gives to the object (unless the
object's own pixel beside it was reached only in the last of the ``max_grow`` rounds: then it stays background). The
ring is one pixel of the frame; at another ``--pixel-size`` it is not rescaled. A network
outlines micronuclei tighter than the lab's annotators did (on the training frames the median area of its matched
objects under 100 px is 0.75-0.9 of the annotated one, and a 20-px spot one pixel ring too small misses IoU 0.5);
a whole ring overshoots, while the ring's pixels bright enough to belong to the spot by the level rule bring the
outline to where the annotators drew it. ``grow_area`` and ``grow_level`` are calibrated on training frames like the
others (``postprocessing.grow_area``, ``postprocessing.grow_level``; ``grow_area`` 0: no growth).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from nucleiscreen.kernels._workspace import Runs
from nucleiscreen.kernels.instances import DEFAULT_MAX_GROW, DEFAULT_MIN_AREA, check_class_map, instance_runs
from nucleiscreen.kernels.runs import paint_runs

INNER = 2
OUTER = 6
DEFAULT_CONTRAST_AREA = 300


class Boxes(NamedTuple):
    """Pixel count and bounding box (rows y0..y1, columns x0..x1, inclusive) of every label, indexed by label; a label
    without pixels has area 0 and the empty box y0 = h, y1 = -1, x0 = w, x1 = -1."""

    area: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray


@numba.njit(nogil=True, cache=True, inline="always")
def _value(image, y, x, lo, scale):
    """The normalized image at (y, x): the image itself, or with ``scale`` > 0 the raw frame normalized on the fly
    exactly as ``kernels/normalize.py`` writes it (float64 arithmetic, clipped, rounded to float32)."""
    if scale <= 0.0:
        return np.float32(image[y, x])
    v = (image[y, x] - lo) * scale
    return np.float32(min(max(v, 0.0), 1.0))


@numba.njit(nogil=True, cache=True, inline="always")
def _no_boxes(n, h, w):
    """``Boxes`` of labels 0..n that have no pixels yet."""
    return Boxes(
        area=np.zeros(n + 1, np.int64), y0=np.full(n + 1, h, np.int64), y1=np.full(n + 1, -1, np.int64),
        x0=np.full(n + 1, w, np.int64), x1=np.full(n + 1, -1, np.int64),
    )  # fmt: skip


@numba.njit(nogil=True, cache=True, inline="always")
def _add_run(boxes, k, y, start, end):
    """Add the run y, start..end of label k to its ``Boxes`` (no run before it was below it)."""
    boxes.area[k] += end - start + 1
    boxes.y0[k] = min(boxes.y0[k], y)
    boxes.y1[k] = y
    boxes.x0[k] = min(boxes.x0[k], start)
    boxes.x1[k] = max(boxes.x1[k], end)


@numba.njit(nogil=True, cache=True)
def _boxes_of_labels(labels, n):
    """``Boxes`` of the labels 0..n of a label image, by runs of one label along the rows."""
    h, w = labels.shape
    boxes = _no_boxes(n, h, w)
    for y in range(h):
        x = 0
        while x < w:
            k = labels[y, x]
            if k == 0:
                x += 1
                continue
            start = x
            while x < w and labels[y, x] == k:
                x += 1
            _add_run(boxes, k, y, start, x - 1)
    return boxes


@numba.njit(nogil=True, cache=True)
def _boxes_of_runs(runs, n, h, w):
    """``_boxes_of_labels`` from the ``Runs`` that ``instance_runs`` makes (no pass over the pixels)."""
    boxes = _no_boxes(n, h, w)
    x0 = runs.x0
    x1 = runs.x1
    ids = runs.ids
    starts = runs.starts
    for y in range(h):
        for r in range(starts[y], starts[y + 1]):
            _add_run(boxes, ids[r], y, x0[r], x1[r])
    return boxes


@numba.njit(nogil=True, cache=True)
def _contrasts(labels, image, boxes, max_area, inner, outer, lo, scale):
    """Contrast and image sum of the objects under ``max_area`` px (inf and 0 for the others)."""
    h, w = labels.shape
    area, y0, y1, x0, x1 = boxes.area, boxes.y0, boxes.y1, boxes.x0, boxes.x1
    n = area.size - 1
    total = np.zeros(n + 1, np.float64)
    for k in range(1, n + 1):  # the image is read only for the measured objects, inside their boxes, run by run
        if area[k] == 0 or area[k] >= max_area:
            continue
        for y in range(y0[k], y1[k] + 1):
            x = x0[k]
            while x <= x1[k]:
                if labels[y, x] != k:
                    x += 1
                    continue
                s = 0.0
                while x <= x1[k] and labels[y, x] == k:
                    s += _value(image, y, x, lo, scale)
                    x += 1
                total[k] += s
    out = np.full(n + 1, np.inf)
    size = 0  # the largest grown box among the measured objects (an id may label pixels far apart)
    for k in range(1, n + 1):
        if 0 < area[k] < max_area:
            size = max(size, (y1[k] - y0[k] + 1 + 2 * outer) * (x1[k] - x0[k] + 1 + 2 * outer))
    ring = np.empty(size, np.float32)
    for k in range(1, n + 1):
        if area[k] == 0 or area[k] >= max_area:
            continue
        m = 0
        for y in range(max(y0[k] - outer, 0), min(y1[k] + outer + 1, h)):
            for x in range(max(x0[k] - outer, 0), min(x1[k] + outer + 1, w)):
                if labels[y, x] != 0:
                    continue
                if y0[k] - inner <= y <= y1[k] + inner and x0[k] - inner <= x <= x1[k] + inner:
                    continue
                ring[m] = _value(image, y, x, lo, scale)
                m += 1
        if m:
            out[k] = total[k] / area[k] - np.median(ring[:m])
    return out, total


@numba.njit(nogil=True, cache=True)
def _grow(out, classes, labels, image, grow, level, boxes, lo, scale):
    h, w = labels.shape
    for k in np.nonzero(grow)[0]:  # background pixels next to object k within its bounding box grown by one
        y0, y1, x0, x1 = boxes.y0[k], boxes.y1[k], boxes.x0[k], boxes.x1[k]
        for y in range(max(y0 - 1, 0), min(y1 + 2, h)):
            for x in range(max(x0 - 1, 0), min(x1 + 2, w)):
                if classes[y, x] != 0 or labels[y, x] != 0 or _value(image, y, x, lo, scale) < level[k]:
                    continue
                near, other = False, False
                for yy in range(max(y - 1, 0), min(y + 2, h)):
                    for xx in range(max(x - 1, 0), min(x + 2, w)):
                        v = labels[yy, xx]
                        near |= v == k
                        # another object, or boundary no seed reached (the pixel would join it to object k)
                        other |= (v != 0 and v != k) or (v == 0 and classes[yy, xx] != 0)
                if near and not other:
                    out[y, x] = 2


@numba.njit(nogil=True, cache=True)
def _erase(out, labels, faint, boxes):
    for k in np.nonzero(faint)[0]:  # only inside the faint objects' bounding boxes
        y0, y1, x0, x1 = boxes.y0[k], boxes.y1[k], boxes.x0[k], boxes.x1[k]
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                if labels[y, x] == k:
                    out[y, x] = 0


def object_contrast(labels: np.ndarray, image: np.ndarray, max_area: int = DEFAULT_CONTRAST_AREA,
                    ring: tuple[int, int] = (INNER, OUTER)) -> np.ndarray:
    """Contrast (module docstring) of every object under ``max_area`` px, indexed by label (inf for the others and for
    label 0 and unused ids).

    Parameters
    ----------
    labels : (H, W) integer array
        Instance labels, 0 background.
    image : (H, W) float array
        The normalized frame (``nucleiscreen.kernels.normalize``).
    max_area : int
        Only objects with fewer pixels are measured.
    ring : (int, int)
        The background ring's inner and outer margins (px) around the object's bounding box (``INNER``, ``OUTER``
        at the model's pixel size; the engine scales them, and ``max_area``, for frames at another one).
    """
    contrast, _, _ = _contrasts_and_boxes(labels, image, max_area, ring)
    return contrast


def _contrasts_and_boxes(labels: np.ndarray, image: np.ndarray, max_area: int, ring: tuple[int, int],
                         rescale: tuple[float, float] | None = None, boxes: Boxes | None = None) -> tuple:
    """``object_contrast``, every label's ``Boxes`` and the sum of the image over it (for the objects under
    ``max_area``; 0 for the others); ``rescale`` as ``erase_faint``'s; ``boxes``: the boxes when the caller has them
    (from the labels' runs), else found here."""
    if labels.shape != image.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and image {image.shape} must be 2-D arrays of one shape")
    if max_area < 1:
        raise ValueError(f"max_area must be positive, got {max_area}")
    if not 0 <= ring[0] < ring[1]:
        raise ValueError(f"ring must be (inner, outer) margins with 0 <= inner < outer, got {ring}")
    labels = np.ascontiguousarray(labels)
    if boxes is None:
        boxes = _boxes_of_labels(labels, int(labels.max(initial=0)))
    image, lo, scale = _image(image, rescale)
    contrast, total = _contrasts(labels, image, boxes, int(max_area), int(ring[0]), int(ring[1]), lo, scale)
    return contrast, boxes, total


def _image(image: np.ndarray, rescale: tuple[float, float] | None) -> tuple[np.ndarray, float, float]:
    """The kernels' image and on-the-fly normalization: a raw uint8/uint16 frame with ``rescale``, else float32."""
    if rescale is None:
        return np.ascontiguousarray(image, np.float32), 0.0, 0.0
    lo, scale = rescale
    if image.dtype not in (np.uint8, np.uint16) or not scale > 0:
        raise ValueError(f"rescale needs a uint8 or uint16 frame and a positive scale, got {image.dtype}, {scale}")
    return np.ascontiguousarray(image), float(lo), float(scale)


def filters(min_contrast: float, min_edge_area: int, grow_area: int) -> bool:
    """Whether these settings change any class map (else the filter step is skipped, and its inputs not made)."""
    return min_contrast > 0 or min_edge_area > 0 or grow_area > 0


def erase_faint(class_map: np.ndarray, labels: np.ndarray, image: np.ndarray, min_contrast: float,
                max_area: int = DEFAULT_CONTRAST_AREA, ring: tuple[int, int] = (INNER, OUTER),
                min_edge_area: int = 0, grow_area: int = 0, grow_level: float = 0.5,
                rescale: tuple[float, float] | None = None) -> np.ndarray:
    """The class map with the pixels of the faint small objects and of the edge slivers (fewer than
    ``min_edge_area`` px, touching the frame's edge) of ``labels`` (made from it) set to background, and the other
    objects under ``grow_area`` px grown by the bright pixels of their outer ring (module docstring).

    ``image`` is the normalized frame, or with ``rescale = (lo, scale)`` (``normalize.normalization_range``) the raw
    uint8/uint16 frame, normalized on the fly where the filter reads it (the same values; no normalized copy).

    Returns ``class_map`` itself when no object is erased or qualifies for the growth (so always when
    ``min_contrast``, ``min_edge_area`` and ``grow_area`` are all <= 0), else a copy.
    """
    return _erase_faint(class_map, labels, None, image, min_contrast, max_area, ring, min_edge_area, grow_area,
                        grow_level, rescale)


def _erase_faint(class_map, labels, boxes, image, min_contrast, max_area, ring, min_edge_area, grow_area,
                 grow_level, rescale) -> np.ndarray:
    if not filters(min_contrast, min_edge_area, grow_area):
        return class_map
    if class_map.shape != labels.shape:
        raise ValueError(f"class map {class_map.shape} and labels {labels.shape} differ in shape")
    # contrast is measured for the objects the filter or the growth may touch (max_area 1: none, no object is under 1)
    measured = max(max_area if min_contrast > 0 else 1, grow_area)
    contrast, boxes, total = _contrasts_and_boxes(labels, image, measured, ring, rescale, boxes)
    area = boxes.area
    faint = (contrast < min_contrast) & (area < max_area) if min_contrast > 0 else np.zeros(len(area), bool)
    if min_edge_area > 0:
        h, w = labels.shape
        edge = (boxes.y0 == 0) | (boxes.x0 == 0) | (boxes.y1 == h - 1) | (boxes.x1 == w - 1)
        faint |= (area > 0) & (area < min_edge_area) & edge
    grow = ~faint & (area > 0) & (area < grow_area) & (contrast > 0) & np.isfinite(contrast)
    if not faint.any() and not grow.any():
        return class_map
    out = class_map.copy()
    labels = np.ascontiguousarray(labels)
    _erase(out, labels, faint, boxes)
    if grow.any():
        contrast = np.where(grow, contrast, 0.0)
        level = total / np.maximum(area, 1) - (1 - grow_level) * contrast  # background + grow_level * contrast
        image, lo, scale = _image(image, rescale)
        _grow(out, np.ascontiguousarray(class_map), labels, image, grow, level, boxes, lo, scale)
    return out


def filter_faint(class_map: np.ndarray, image: np.ndarray, min_contrast: float, max_area: int = DEFAULT_CONTRAST_AREA,
                 ring: tuple[int, int] = (INNER, OUTER), min_edge_area: int = 0, grow_area: int = 0,
                 grow_level: float = 0.5, rescale: tuple[float, float] | None = None,
                 **instance_args) -> np.ndarray:
    """``erase_faint`` on the instances ``instances_from_classes(class_map, **instance_args)``: the post-processing's
    filter step, which the engine and the trainer's validation share. (The objects' areas and boxes come from the
    instances' runs, so the label image is read only around the small objects.)"""
    if not filters(min_contrast, min_edge_area, grow_area):
        return class_map
    args = {"min_area": DEFAULT_MIN_AREA, "connectivity": 8, "max_grow": DEFAULT_MAX_GROW, **instance_args}
    check_class_map(class_map, **args)
    labels = np.empty(class_map.shape, np.int32)
    if labels.size == 0:
        return class_map
    x0, x1, ids, starts, n, _ = instance_runs(class_map, **args)
    runs = Runs(x0, x1, ids, starts)
    boxes = _boxes_of_runs(runs, int(n), *class_map.shape)
    paint_runs(runs, labels)
    return _erase_faint(class_map, labels, boxes, image, min_contrast, max_area, ring, min_edge_area, grow_area,
                        grow_level, rescale)
