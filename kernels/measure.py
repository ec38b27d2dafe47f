"""Per-object measurements with CellProfiler's names, and the per-frame summary of the image table.

Objects are measured as runs (maximal stretches of one label in a row). ``segment_and_measure`` and
``segment_and_summarize`` take them straight from the kernel of ``instances_from_classes``, so the class map is read
once and the label image is only written, in the same pass that measures; ``measure`` and ``summarize_frame`` cut a
label image into runs first. Numba kernels (``nogil=True``, so frames can be measured on threads) then:

- compute the perimeter's border pixels and their weight classes on bit planes, 64 pixels per word operation
  (``_perimeter.py``);
- in one pass over the runs, accumulate per label the pixel count, the coordinate sums and second moments (closed
  forms per run), the bounding box, whether it touches the image edge, the intensity sums and maximum (the one loop
  over pixels, over object pixels only) and its border pixels of each weight class (counted per run);
- derive the columns below from those sums (``_moments.py``, both);
- with ``solidity``, count the pixels of each object's convex hull (``_convex.py``).

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

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import polars as pl

from nucleiscreen.kernels._convex import _convex_areas
from nucleiscreen.kernels._moments import _accumulate, _columns
from nucleiscreen.kernels._perimeter import Planes, planes
from nucleiscreen.kernels._workspace import Runs, per_thread, workspace
from nucleiscreen.kernels.instances import DEFAULT_MAX_GROW, DEFAULT_MIN_AREA, check_class_map, instance_runs
from nucleiscreen.kernels.intensity import FEATURES, frame_mean, measure_channel
from nucleiscreen.kernels.runs import _label_runs

DEFAULT_MICRONUCLEUS_AREA = 100


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


def summary_schema(channel: str = "DNA") -> dict[str, pl.DataType]:
    """Names and dtypes of the ``summarize_frame`` values, in order (the image table's columns after the frame's)."""
    return {"Count_Nuclei": pl.Int64, "Count_Micronuclei": pl.Int64, "Count_Nuclei_NonBorder": pl.Int64,
            "Total_Nuclei_AreaShape_Area": pl.Int64, "Mean_Nuclei_AreaShape_Area": pl.Float64,
            "Median_Nuclei_AreaShape_Area": pl.Float64, f"Mean_Nuclei_Intensity_MeanIntensity_{channel}": pl.Float64}


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


class _Objects(NamedTuple):
    """Objects as ``Runs`` with ids 1..count; ``numbers``: the label of each id (None: the id); ``touch[y]``: whether
    objects of row y may touch other objects."""

    runs: Runs
    count: int
    numbers: np.ndarray | None
    touch: np.ndarray


def _no_objects(h: int) -> _Objects:
    runs = Runs(*(np.zeros(1, np.int32) for _ in range(3)), starts=np.zeros(h + 1, np.int64))
    return _Objects(runs, 0, None, np.ones(h, bool))


def _objects_of_labels(labels: np.ndarray) -> _Objects:
    """The runs of a validated label image; huge or sparse ids are compacted (per-id arrays are sized by the id)."""
    h, w = labels.shape
    if labels.size == 0:
        return _no_objects(h)
    runs = per_thread(workspace, h, w).runs
    _, lo, hi = _label_runs(labels, runs)
    unsigned = labels.dtype.kind == "u"  # a uint64 id >= 2^63 reads as negative in the kernel
    if lo < 0 and not unsigned:
        raise ValueError("labels must be >= 0 (0 = background)")
    numbers = None
    if lo < 0 or hi >= 2**31 - 1 or hi > labels.size:
        # sparse huge ids: the run ids (int32) cannot hold them, so cut again with compact ids
        ids, inverse = np.unique(labels, return_inverse=True)
        compact = inverse.reshape(labels.shape).astype(np.int32) + (1 if ids[0] != 0 else 0)
        numbers = ids if ids[0] == 0 else np.concatenate([[0], ids])
        _, _, hi = _label_runs(compact, runs)
    return _Objects(runs, int(hi), numbers, np.ones(h, bool))


def _objects_of_classes(class_map: np.ndarray, min_area: int, connectivity: int, max_grow: int) -> _Objects:
    x0, x1, ids, starts, n, touch = instance_runs(class_map, min_area, connectivity, max_grow)
    return _Objects(Runs(x0, x1, ids, starts), int(n), None, touch)


_NO_LABELS = np.zeros((0, 0), np.int32)


def _kernel_inputs(intensity: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, Planes, np.ndarray]:
    """The intensity as the kernels take it, this thread's ``Planes``, and the label image to paint (empty: none)."""
    # (numba has no float16 arithmetic; float32 holds every float16 exactly)
    intensity = np.ascontiguousarray(intensity, np.float32 if intensity.dtype == np.float16 else None)
    return intensity, per_thread(planes, *intensity.shape), _NO_LABELS if labels is None else labels


def _table(objects: _Objects, intensity: np.ndarray, channel: str, solidity: bool, labels=None) -> pl.DataFrame:
    intensity, bits, labels = _kernel_inputs(intensity, labels)
    columns = _columns(objects.runs, objects.count, objects.touch, intensity, _exact(intensity), bits, labels)
    convex = _convex_areas(objects.runs, objects.count, intensity.shape[0])[columns.number] if solidity else None
    if objects.numbers is not None:
        columns = columns._replace(number=objects.numbers[columns.number])
    values = list(columns)  # in the order of object_schema
    if solidity:
        values += [convex, columns.area / convex]
    names = object_schema(channel, solidity)  # the columns already have its dtypes
    return pl.DataFrame([pl.Series(name, col) for name, col in zip(names, values, strict=True)])


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


def _frame_summary(objects: _Objects, intensity: np.ndarray, micronucleus_area: int, channel: str, labels=None) -> dict:
    intensity, bits, labels = _kernel_inputs(intensity, labels)
    sums = _accumulate(objects.runs, objects.count, intensity, _exact(intensity), False, bits, labels)
    present = sums.area[1:] > 0
    area = sums.area[1:][present]
    mean_intensity = sums.intensity_sum[1:][present] / area
    return _summary(area, sums.touches[1:][present], mean_intensity, micronucleus_area, channel)


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
    return _table(_objects_of_labels(labels), intensity, channel, solidity)


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
    return _frame_summary(_objects_of_labels(labels), intensity, micronucleus_area, channel)


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


def _other_channels(objects: _Objects, others, channel: str, micronucleus_area: int, table: bool
                    ) -> tuple[dict, dict]:
    """``others`` (name -> (image, illumination or None)) measured in the objects (``measure_channel``): their
    image-table values and, with ``table``, their object-table columns. The segmented channel itself, when it is
    among them, adds only what its own measures lack (its frame mean; per object its min and median)."""
    summary, columns = {}, {}
    for name, (image, flat) in others.items():
        if name == channel and not table:  # its nuclei's mean is the fused kernel's; its frame mean alone
            summary[f"Intensity_MeanIntensity_{name}"] = frame_mean(image, flat)
            continue
        own = ("MinIntensity", "MedianIntensity") if name == channel else FEATURES
        values, per_object = measure_channel(objects.runs, objects.count, _check_intensity(image, image.shape), name,
                                             micronucleus_area, table, own, flat)
        summary.update({k: v for k, v in values.items() if name != channel or k.startswith("Intensity_")})
        columns.update(per_object or {})
    return summary, columns


def _segment(class_map, intensity, min_area, connectivity, max_grow, label_image):
    """Validated inputs as (objects, empty label image or None, intensity); the label image is painted when
    measured."""
    check_class_map(class_map, min_area, connectivity, max_grow)
    intensity = _check_intensity(intensity, class_map.shape)
    if class_map.size == 0:
        return _no_objects(class_map.shape[0]), np.zeros(class_map.shape, np.int32) if label_image else None, intensity
    objects = _objects_of_classes(class_map, min_area, connectivity, max_grow)
    return objects, np.empty(class_map.shape, np.int32) if label_image else None, intensity


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
    objects, labels, intensity = _segment(class_map, intensity, min_area, connectivity, max_grow, label_image)
    return labels, _table(objects, intensity, channel, solidity, labels)


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
    objects, labels, intensity = _segment(class_map, intensity, min_area, connectivity, max_grow, label_image)
    return labels, _frame_summary(objects, intensity, micronucleus_area, channel, labels)


def segment_frame(
    class_map: np.ndarray,
    intensity: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 8,
    max_grow: int = DEFAULT_MAX_GROW,
    micronucleus_area: int = DEFAULT_MICRONUCLEUS_AREA,
    channel: str = "DNA",
    objects: bool = False,
    label_image: bool = True,
    others: Mapping[str, tuple[np.ndarray, tuple | None]] | None = None,
) -> tuple[np.ndarray | None, dict[str, int | float | None], pl.DataFrame | None]:
    """A frame's nuclei and everything measured of them, in one pass over the class map (the engine's per-frame
    path): ``segment_and_summarize``'s values, or with ``objects`` ``segment_and_measure``'s table and the values
    summarized from it.

    Parameters
    ----------
    class_map, intensity, min_area, connectivity, max_grow, micronucleus_area, channel, label_image
        As ``segment_and_summarize``.
    objects : bool
        Also the per-object table.
    others : mapping of str to (image, illumination or None), optional
        More channels of the frame (``--channels``), measured in the same nuclei without a label image
        (``kernels/intensity.py``): each adds to the summary its frame mean ``Intensity_MeanIntensity_<name>`` and
        its nuclei's mean ``Mean_Nuclei_Intensity_MeanIntensity_<name>``, and to the table every feature of
        ``FEATURES`` (``Intensity_<feature>_<name>``). The segmented ``channel`` among them adds its frame mean and,
        per object, its ``MinIntensity`` and ``MedianIntensity``. ``illumination``: as for ``object_intensities``.

    Returns
    -------
    labels : (H, W) int32 array or None
    summary : dict
    table : polars.DataFrame or None
        None without ``objects``.
    """
    found, labels, intensity = _segment(class_map, intensity, min_area, connectivity, max_grow, label_image)
    if objects:
        table = _table(found, intensity, channel, False, labels)
        summary = summarize_objects(table, micronucleus_area=micronucleus_area, channel=channel)
    else:
        table, summary = None, _frame_summary(found, intensity, micronucleus_area, channel, labels)
    if others:
        values, columns = _other_channels(found, others, channel, micronucleus_area, objects)
        summary.update(values)
        if table is not None:
            table = table.with_columns(pl.Series(k, v) for k, v in columns.items())
    return labels, summary, table


def typical_area(labels: Sequence[np.ndarray]) -> tuple[float | None, int]:
    """The typical nucleus area of some label images and how many nuclei it was taken over: the median area of the
    whole nuclei (off the frame border, at least 0.3 x the median of all such objects, so that micronuclei and
    fragments do not count); None when there are none. The model card's ``nucleus_area_px`` is this on the model's
    training frames, and ``--pixel-size auto`` compares a plate's with it (``engine/scale.py``)."""
    areas = []
    for lab in labels:
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        counts[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = 0
        areas.append(counts[counts > 0])
    a = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    if a.size == 0:
        return None, 0
    a = a[a >= 0.3 * np.median(a)]
    return float(np.median(a)), int(a.size)
