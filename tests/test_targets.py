import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.targets import classes_from_instances


def _brute_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Object pixels with a pixel of another label within chessboard distance `width` (outside the image ignored)."""
    pad = np.pad(labels.astype(np.int64), width, constant_values=-1)
    band = np.zeros(labels.shape, bool)
    h, w = labels.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            s = pad[width + dy:width + dy + h, width + dx:width + dx + w]
            band |= (s != labels) & (s != -1)
    return band & (labels > 0)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_band_matches_brute_force_on_real_masks(aits, width):
    for path in sorted((aits / "train" / "masks").glob("*.tif"))[:3]:
        labels = tifffile.imread(path)
        classes = classes_from_instances(labels, width)
        band = _brute_band(labels, width)
        assert ((classes == 2) & ~band).sum() == 0  # every boundary pixel is within the band
        # Band pixels left interior are only the deepest pixels of objects thinner than the band.
        kept = band & (classes == 1)
        assert kept.sum() < 0.01 * band.sum()
        assert ((classes > 0) == (labels > 0)).all()


def test_every_object_keeps_an_interior_seed(aits):
    labels = tifffile.imread(sorted((aits / "train" / "masks").glob("*.tif"))[0])
    classes = classes_from_instances(labels)
    ids = np.unique(labels[labels > 0])
    seeded = np.unique(labels[classes == 1])
    assert set(ids) == set(seeded)


def test_touching_squares_are_separated_by_boundary():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 7
    classes = classes_from_instances(labels, width=2)
    assert (classes[5:15, 13:17] == 2).all()  # two px each side of the contact
    assert (classes[7:13, 7:13] == 1).all() and (classes[7:13, 17:23] == 1).all()
    assert (classes[labels == 0] == 0).all()


def test_objects_under_solid_area_are_all_interior(aits):
    labels = tifffile.imread(sorted((aits / "train" / "masks").glob("*.tif"))[0])
    areas = np.bincount(labels.ravel())
    small = (areas < 50)[labels] & (labels > 0)
    assert small.any()
    plain, solid = classes_from_instances(labels), classes_from_instances(labels, solid_area=50)
    assert (solid[small] == 1).all() and (plain[small] == 2).any()
    np.testing.assert_array_equal(solid[~small], plain[~small])  # larger objects keep their band
    back = instances_from_classes(solid, min_area=1)
    assert back.max() == len(np.unique(labels[labels > 0]))
    np.testing.assert_array_equal(back > 0, labels > 0)


def test_frame_edge_is_not_a_boundary():
    labels = np.ones((10, 10), np.int32)
    assert (classes_from_instances(labels) == 1).all()


def test_bad_input():
    with pytest.raises(ValueError, match="solid_area"):
        classes_from_instances(np.zeros((2, 2), np.int32), solid_area=-1)
    with pytest.raises(ValueError, match="2-D"):
        classes_from_instances(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="integer"):
        classes_from_instances(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="width"):
        classes_from_instances(np.zeros((4, 4), np.int32), width=0)


SLIVER = """
.......
...##..
...###.
...###.
...###.
...###.
..###..
..###..
..###..
.###...
.###...
.###...
.###...
.###...
..#....
..#....
.......
"""  # a 3-px-wide sliver from the annotated frames: its deepest pixels are three separate spots


def mask_of(text: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in text.split()], bool)


def interior_pieces(classes: np.ndarray, labels: np.ndarray, k: int) -> int:
    return ndi.label((classes == 1) & (labels == k), np.ones((3, 3)))[1]


def test_an_object_keeps_one_interior_piece():
    sliver = mask_of(SLIVER).astype(np.int32)
    dumbbell = np.zeros((15, 30), np.int32)
    dumbbell[2:13, 1:12] = 1
    dumbbell[2:13, 18:29] = 1
    dumbbell[7:9, 12:18] = 1  # a 2-px-wide waist: all of it boundary at width 2
    for labels in (sliver, dumbbell):
        classes = classes_from_instances(labels)
        assert interior_pieces(classes, labels, 1) == 1
        assert ((classes > 0) == (labels > 0)).all()
        np.testing.assert_array_equal(instances_from_classes(classes, min_area=1), labels)  # back in one piece


def test_the_join_keeps_off_a_touching_neighbour():
    labels = np.zeros((15, 30), np.int32)
    labels[2:13, 1:12] = 1
    labels[2:13, 18:29] = 1
    labels[7:9, 12:18] = 1
    labels[9:12, 12:18] = 2  # a neighbour under the waist
    classes = classes_from_instances(labels)
    assert interior_pieces(classes, labels, 1) == 1
    waist = (classes == 1)[7:9, 12:18]
    assert waist[0].all() and not waist[1].any()  # the path runs along the waist's row away from the neighbour
    assert instances_from_classes(classes, min_area=1).max() == 2
