"""measure against scikit-image's regionprops_table, and the per-frame summary on hand-made label images."""

from concurrent.futures import ThreadPoolExecutor

import imagecodecs
import numpy as np
import polars as pl
import pytest
import tifffile
from skimage.measure import label, regionprops_table

from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import (
    measure,
    object_schema,
    segment_and_measure,
    segment_and_summarize,
    summarize_frame,
    summarize_objects,
)
from nucleiscreen.kernels.targets import classes_from_instances

# our column -> regionprops_table column (same units; orientation is compared in degrees below)
TWINS = {
    "ObjectNumber": "label",
    "AreaShape_Area": "area",
    "AreaShape_Center_X": "centroid-1",
    "AreaShape_Center_Y": "centroid-0",
    "AreaShape_BoundingBoxMinimum_X": "bbox-1",
    "AreaShape_BoundingBoxMinimum_Y": "bbox-0",
    "AreaShape_BoundingBoxMaximum_X": "bbox-3",
    "AreaShape_BoundingBoxMaximum_Y": "bbox-2",
    "AreaShape_Perimeter": "perimeter",
    "AreaShape_MajorAxisLength": "axis_major_length",
    "AreaShape_MinorAxisLength": "axis_minor_length",
    "AreaShape_Eccentricity": "eccentricity",
    "AreaShape_EquivalentDiameter": "equivalent_diameter_area",
    "AreaShape_Extent": "extent",
    "Intensity_MeanIntensity_DNA": "intensity_mean",
    "Intensity_StdIntensity_DNA": "intensity_std",
    "Intensity_MaxIntensity_DNA": "intensity_max",
}
PROPERTIES = [
    "label",
    "area",
    "centroid",
    "bbox",
    "perimeter",
    "axis_major_length",
    "axis_minor_length",
    "eccentricity",
    "orientation",
    "equivalent_diameter_area",
    "extent",
    "intensity_mean",
    "intensity_std",
    "intensity_max",
]


def assert_matches_regionprops(labels: np.ndarray, intensity: np.ndarray) -> pl.DataFrame:
    table = measure(labels, intensity)
    ref = regionprops_table(labels, intensity, properties=PROPERTIES)
    assert table.height == len(ref["label"])
    for ours, theirs in TWINS.items():
        # 1e-6 relative; the absolute 1e-9 only matters for values that are 0 up to rounding (minor axis of a line)
        np.testing.assert_allclose(table[ours].to_numpy(), ref[theirs], rtol=1e-6, atol=1e-9, err_msg=ours)
    # Orientation in degrees; +90 and -90 are the same axis (skimage's sign for a horizontal major axis depends on
    # the rounding of a zero covariance), so compare modulo 180.
    turn = table["AreaShape_Orientation"].to_numpy() - np.degrees(ref["orientation"])
    np.testing.assert_allclose((turn + 90) % 180 - 90, 0, atol=1e-7)
    np.testing.assert_allclose(
        table["Intensity_IntegratedIntensity_DNA"].to_numpy(), ref["intensity_mean"] * ref["area"], rtol=1e-6
    )
    h, w = labels.shape
    touches = (ref["bbox-0"] == 0) | (ref["bbox-1"] == 0) | (ref["bbox-2"] == h) | (ref["bbox-3"] == w)
    np.testing.assert_array_equal(table["TouchesBorder"].to_numpy(), touches)
    return table


def test_matches_regionprops_on_real_masks(aits):
    files = sorted((aits / "train" / "masks").glob("*.tif"))[:3]
    assert files
    rng = np.random.default_rng(0)
    for path in files:
        labels = tifffile.imread(path)
        image = imagecodecs.imread(aits / "train" / "images" / (path.stem + ".png"))
        assert image.shape == labels.shape
        assert_matches_regionprops(labels, image)  # uint16 labels, uint8 frame
        raw = rng.integers(0, 65536, labels.shape, dtype=np.uint16)
        table = assert_matches_regionprops(labels.astype(np.int32), raw)  # 16-bit frame, full range
        assert table["ObjectNumber"].to_list() == list(range(1, labels.max() + 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int16, np.int32])
def test_matches_regionprops_on_random_labels(dtype):
    rng = np.random.default_rng(3)
    for density in (0.2, 0.5, 0.8):
        mask = rng.random((70, 90)) < density
        labels = label(mask, connectivity=1)  # many tiny objects: single pixels, lines, plus shapes, L shapes
        intensity = (rng.random(mask.shape) * 200).astype(dtype)
        assert_matches_regionprops(labels, intensity)


def test_touching_objects_match_regionprops():
    # every pixel a random label: objects touch each other along edges and corners, and are scattered (one id, one
    # object, as in regionprops)
    rng = np.random.default_rng(11)
    for shape in ((40, 50), (7, 130), (1, 9), (9, 1)):
        labels = rng.integers(0, 6, shape).astype(np.int32)
        assert_matches_regionprops(labels, rng.integers(0, 4096, shape).astype(np.uint16))
    blocks = np.kron(rng.integers(1, 9, (12, 12)), np.ones((5, 5), np.int32))  # touching squares, no background
    assert_matches_regionprops(blocks, rng.random(blocks.shape))


def test_non_contiguous_inputs():
    rng = np.random.default_rng(4)
    labels = label(rng.random((90, 120)) < 0.5, connectivity=2)
    raw = rng.integers(0, 65536, labels.shape).astype(np.uint16)
    assert_matches_regionprops(labels[::2, ::3], raw[::2, ::3])
    assert_matches_regionprops(np.asfortranarray(labels), np.asfortranarray(raw))


def test_solidity_matches_regionprops(aits):
    rng = np.random.default_rng(2)
    frames = [tifffile.imread(f) for f in sorted((aits / "train" / "masks").glob("*.tif"))[:2]]
    frames += [label(rng.random((60, 70)) < d, connectivity=1) for d in (0.3, 0.6)]  # pixels, lines, L shapes
    frames += [rng.integers(0, 5, (30, 40))]  # scattered objects
    for labels in frames:
        table = measure(labels, labels.astype(np.float32), solidity=True)
        ref = regionprops_table(labels, properties=["label", "area_convex", "solidity"])
        np.testing.assert_array_equal(table["AreaShape_ConvexArea"].to_numpy(), ref["area_convex"])
        np.testing.assert_allclose(table["AreaShape_Solidity"].to_numpy(), ref["solidity"], rtol=1e-12)
        plain = measure(labels, labels.astype(np.float32))
        assert table.drop("AreaShape_ConvexArea", "AreaShape_Solidity").equals(plain)


def test_ids_need_not_be_consecutive_or_connected():
    rng = np.random.default_rng(5)
    labels = label(rng.random((80, 80)) < 0.4, connectivity=2)
    ids = rng.permutation(10 * labels.max())[: labels.max()] + 1
    sparse = np.concatenate([[0], ids])[labels]
    sparse[sparse == ids[1]] = ids[0]  # one id on two separate blobs: one object, as in regionprops
    table = assert_matches_regionprops(sparse, rng.random(labels.shape))
    assert table["ObjectNumber"].to_list() == sorted(set(ids.tolist()) - {int(ids[1])})
    # ids far larger than the image (per-label arrays are sized by the largest id, so these are compacted first)
    huge = np.zeros((10, 10), np.int64)
    huge[1:3, 1:3] = 5
    huge[5:9, 6:8] = 3_000_000_000
    table = measure(huge, np.ones((10, 10), np.uint16))
    assert table["ObjectNumber"].to_list() == [5, 3_000_000_000]
    assert table["AreaShape_Area"].to_list() == [4, 8]


def test_empty_and_degenerate_frames():
    empty = measure(np.zeros((8, 9), np.int32), np.zeros((8, 9), np.uint16))
    assert empty.height == 0 and empty.schema == pl.Schema(object_schema())
    none = measure(np.zeros((0, 5), np.int32), np.zeros((0, 5), np.uint16))
    assert none.height == 0
    one = measure(np.ones((1, 1), np.uint8), np.full((1, 1), 7, np.uint16))
    row = one.row(0, named=True)
    assert row["AreaShape_Area"] == 1 and row["AreaShape_Perimeter"] == 0 and row["TouchesBorder"]
    assert row["AreaShape_Orientation"] == -45.0  # skimage's convention when the two variances are equal
    assert row["Intensity_StdIntensity_DNA"] == 0 and row["Intensity_MaxIntensity_DNA"] == 7


def test_float16_frames_are_measured_exactly():
    # (scikit-image averages float16 in float16; every float16 value is exact in float32)
    rng = np.random.default_rng(6)
    labels = label(rng.random((50, 60)) < 0.5, connectivity=2)
    frame = (rng.random(labels.shape) * 3000).astype(np.float16)
    assert measure(labels, frame).equals(measure(labels, frame.astype(np.float32)))


def test_channel_name():
    table = measure(np.ones((3, 3), np.int32), np.ones((3, 3)), channel="H2B")
    assert "Intensity_MeanIntensity_H2B" in table.columns and "Intensity_MeanIntensity_DNA" not in table.columns


@pytest.mark.parametrize(
    "labels, intensity",
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4))),
        (np.zeros((4, 4), np.int32), np.zeros((4, 5))),
        (np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 4))),
        (np.full((4, 4), -1, np.int32), np.zeros((4, 4))),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), bool)),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.complex64)),
    ],
)
def test_rejects_bad_input(labels, intensity):
    with pytest.raises(ValueError):
        measure(labels, intensity)
    with pytest.raises(ValueError):
        summarize_frame(labels, intensity)


def hand_made_frame():
    labels = np.zeros((60, 60), np.int32)
    intensity = np.zeros((60, 60), np.uint16)
    labels[10:30, 10:30] = 1  # 400 px nucleus
    intensity[10:30, 10:30] = 100
    labels[0:15, 40:52] = 2  # 180 px nucleus on the top edge
    intensity[0:15, 40:52] = 5000
    labels[40:45, 5:10] = 3  # 25 px micronucleus
    intensity[40:45, 5:10] = 900
    labels[57:60, 30:34] = 4  # 12 px micronucleus on the bottom edge
    labels[40:51, 40:51] = 5  # 121 px nucleus, intensity 200 on 66 px and 420 on 55 px: mean 300
    intensity[40:46, 40:51] = 200
    intensity[46:51, 40:51] = 420
    return labels, intensity


def test_summarize_frame_on_a_hand_made_frame():
    labels, intensity = hand_made_frame()
    assert summarize_frame(labels, intensity) == {
        "Count_Nuclei": 3,
        "Count_Micronuclei": 2,
        "Count_Nuclei_NonBorder": 2,
        "Total_Nuclei_AreaShape_Area": 521,
        "Mean_Nuclei_AreaShape_Area": 260.5,
        "Median_Nuclei_AreaShape_Area": 260.5,
        "Mean_Nuclei_Intensity_MeanIntensity_DNA": 200.0,
    }
    # a higher cut-off makes the 121 px nucleus a micronucleus
    summary = summarize_frame(labels, intensity, micronucleus_area=150)
    assert summary["Count_Nuclei"] == 2 and summary["Count_Micronuclei"] == 3
    assert summary["Total_Nuclei_AreaShape_Area"] == 400 and summary["Median_Nuclei_AreaShape_Area"] == 400.0
    assert summary["Mean_Nuclei_Intensity_MeanIntensity_DNA"] == 100.0
    # the same from a measure() table
    assert summarize_objects(measure(labels, intensity)) == summarize_frame(labels, intensity)
    assert summarize_objects(measure(labels, intensity), 150) == summary


def test_summarize_frame_without_nuclei():
    labels = np.zeros((30, 30), np.int32)
    assert summarize_frame(labels, np.zeros((30, 30), np.uint16)) == {
        "Count_Nuclei": 0,
        "Count_Micronuclei": 0,
        "Count_Nuclei_NonBorder": 0,
        "Total_Nuclei_AreaShape_Area": 0,
        "Mean_Nuclei_AreaShape_Area": None,
        "Median_Nuclei_AreaShape_Area": None,
        "Mean_Nuclei_Intensity_MeanIntensity_DNA": None,
    }
    labels[0:20, 0:20] = 1  # one nucleus, on the border; one micronucleus
    labels[25:28, 25:28] = 2
    summary = summarize_frame(labels, np.ones((30, 30), np.uint16))
    assert summary["Count_Nuclei"] == 1 and summary["Count_Micronuclei"] == 1
    assert summary["Count_Nuclei_NonBorder"] == 0 and summary["Mean_Nuclei_AreaShape_Area"] is None


def noisy_class_maps(aits, count):
    """Class maps of real masks, as made for training and with 2 % of the pixels set at random (as a network might)."""
    rng = np.random.default_rng(8)
    maps = []
    for path in sorted((aits / "train" / "masks").glob("*.tif"))[:count]:
        classes = classes_from_instances(tifffile.imread(path))
        noisy = classes.copy()
        flip = rng.random(classes.shape) < 0.02
        noisy[flip] = rng.integers(0, 3, int(flip.sum()))
        maps += [classes, noisy]
    return maps


def test_segment_and_measure_equals_the_separate_steps(aits):
    rng = np.random.default_rng(9)
    for classes in noisy_class_maps(aits, 2):
        raw = rng.integers(0, 65536, classes.shape, dtype=np.uint16)
        for kwargs in ({}, {"connectivity": 4}, {"min_area": 30, "max_grow": 2}):
            labels = instances_from_classes(classes, **kwargs)
            got_labels, table = segment_and_measure(classes, raw, **kwargs)
            np.testing.assert_array_equal(got_labels, labels)
            assert table.equals(measure(labels, raw))
            none, again = segment_and_measure(classes, raw, label_image=False, **kwargs)
            assert none is None and again.equals(table)
            got_labels, summary = segment_and_summarize(classes, raw, micronucleus_area=150, **kwargs)
            np.testing.assert_array_equal(got_labels, labels)
            assert summary == summarize_frame(labels, raw, micronucleus_area=150)
            assert summary == summarize_objects(table, micronucleus_area=150)
    empty = np.zeros((0, 6), np.uint8)
    labels, table = segment_and_measure(empty, empty)
    assert labels.shape == (0, 6) and table.height == 0
    assert segment_and_summarize(empty, empty)[1]["Count_Nuclei"] == 0


def test_segment_rejects_bad_input():
    classes = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="class_map"):
        segment_and_measure(classes.astype(np.int32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        segment_and_measure(classes, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="found 3"):
        segment_and_summarize(np.full((4, 4), 3, np.uint8), np.zeros((4, 4)))


def test_threads_give_the_same_result(aits):
    """k threads give the single-threaded results (the kernels release the GIL and keep scratch buffers per thread)."""
    rng = np.random.default_rng(1)
    maps = noisy_class_maps(aits, 3)
    maps += [m[: 400 + 50 * k, 200:] for k, m in enumerate(maps[:3])]  # other shapes: buffers rebuilt between calls
    frames = [(m, rng.integers(0, 4096, m.shape, dtype=np.uint16)) for m in maps]

    def run(frame):
        labels, table = segment_and_measure(*frame)
        return labels, table, segment_and_summarize(*frame)[1], measure(labels, frame[1])

    expected = [run(f) for f in frames]
    for threads in (2, 4):
        with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(run, frames * 2))
        for k, (labels, table, summary, remeasured) in enumerate(got):
            want = expected[k % len(frames)]
            np.testing.assert_array_equal(labels, want[0])
            assert table.equals(want[1]) and summary == want[2] and remeasured.equals(want[3])
