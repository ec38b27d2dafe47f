"""connected_components against scipy, and instances_from_classes as the inverse of classes_from_instances."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.runs import connected_components
from nucleiscreen.kernels.targets import classes_from_instances

STRUCTURE = {4: ndi.generate_binary_structure(2, 1), 8: ndi.generate_binary_structure(2, 2)}


def real_masks(aits, split="train", count=None):
    files = sorted((aits / split / "masks").glob("*.tif"))
    assert files, f"no masks in {aits / split / 'masks'}"
    return [tifffile.imread(f).astype(np.int32) for f in files[:count]]


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every truth object (rows, ids 1..) with every predicted object (columns, ids 1..)."""
    nt, npred = int(truth.max()), int(pred.max())
    pairs = np.bincount(truth.ravel().astype(np.int64) * (npred + 1) + pred.ravel(), minlength=(nt + 1) * (npred + 1))
    pairs = pairs.reshape(nt + 1, npred + 1)
    inter = pairs[1:, 1:]
    union = pairs[1:, :].sum(1)[:, None] + pairs[:, 1:].sum(0)[None, :] - inter
    return inter / union


# --- connected_components -------------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_equals_scipy_on_random_masks(connectivity):
    rng = np.random.default_rng(connectivity)
    shapes = [(97, 131), (64, 64), (1, 50), (50, 1), (1, 1), (2, 3), (0, 5)]
    for density in (0.05, 0.3, 0.45, 0.6, 0.9):
        for shape in shapes:
            mask = rng.random(shape) < density
            expected, _ = ndi.label(mask, STRUCTURE[connectivity])
            got = connected_components(mask, connectivity)
            assert got.dtype == np.int32 and got.shape == mask.shape
            np.testing.assert_array_equal(got, expected, err_msg=f"{shape} density {density}")


def test_connected_components_blobs_and_dtypes():
    rng = np.random.default_rng(7)
    blobs = ndi.gaussian_filter(rng.random((300, 257)), 4) > 0.5  # large irregular components, holes, necks
    for connectivity in (4, 8):
        expected, n = ndi.label(blobs, STRUCTURE[connectivity])
        assert n > 5
        for mask in (blobs, blobs.astype(np.uint8), blobs.astype(np.uint16) * 700, blobs.astype(np.int64) * -3):
            np.testing.assert_array_equal(connected_components(mask, connectivity), expected)
    assert connected_components(np.zeros((5, 6), bool)).max() == 0
    np.testing.assert_array_equal(connected_components(np.ones((4, 3), bool)), np.ones((4, 3)))
    # non-contiguous input
    np.testing.assert_array_equal(connected_components(blobs[::2, ::3]), ndi.label(blobs[::2, ::3], STRUCTURE[8])[0])


def test_connected_components_on_real_masks(aits):
    for labels in real_masks(aits, count=3):
        for connectivity in (4, 8):
            expected, _ = ndi.label(labels > 0, STRUCTURE[connectivity])
            np.testing.assert_array_equal(connected_components(labels > 0, connectivity), expected)


@pytest.mark.parametrize(
    "mask, connectivity",
    [
        (np.zeros((4, 4), np.float32), 8),
        (np.zeros((2, 4, 4), bool), 8),
        (np.zeros(16, bool), 8),
        (np.zeros((4, 4), bool), 6),
        ([[0, 1], [1, 0]], 8),
    ],
)
def test_connected_components_rejects_bad_input(mask, connectivity):
    with pytest.raises(ValueError):
        connected_components(mask, connectivity)


# --- instances_from_classes against its definition ------------------------------------------------------------


def reference_instances(classes, min_area=4, connectivity=8, max_grow=8):
    """instances_from_classes's definition (module docstring), step by step, in plain Python: slow, for small maps."""
    h, w = classes.shape
    if connectivity == 8:
        offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # raster order
    else:
        offsets = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    seeds, n = ndi.label(classes == 1, STRUCTURE[connectivity])

    def neighbours(y, x):
        return [(y + dy, x + dx) for dy, dx in offsets if 0 <= y + dy < h and 0 <= x + dx < w]

    lab = seeds.copy()
    front = []  # round 1: each boundary pixel next to the interior takes its first interior neighbour's seed
    for y in range(h):
        for x in range(w):
            inner = [(yy, xx) for yy, xx in neighbours(y, x) if classes[yy, xx] == 1]
            if max_grow >= 1 and classes[y, x] == 2 and inner:
                lab[y, x] = seeds[inner[0]]
                front.append((y, x))
    for _ in range(1, max_grow):  # round r: the last round's pixels in order claim their unclaimed neighbours
        claimed = []
        for y, x in front:
            for yy, xx in neighbours(y, x):
                if classes[yy, xx] == 2 and lab[yy, xx] == 0:
                    lab[yy, xx] = lab[y, x]
                    claimed.append((yy, xx))
        front = claimed
    dual = STRUCTURE[4 if connectivity == 8 else 8]
    background, nb = ndi.label(lab == 0, dual)
    for b in range(1, nb + 1):  # holes: off the edge, one object around
        hole = background == b
        ys, xs = np.nonzero(hole)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1:
            continue
        around = np.unique(lab[ndi.binary_dilation(hole, dual) & ~hole])
        if len(around) == 1:
            lab[hole] = around[0]
    area = np.bincount(lab.ravel(), minlength=n + 1)
    ids, first = np.unique(lab.ravel(), return_index=True)
    out = np.zeros_like(lab)
    number = 0
    for k in ids[np.argsort(first)]:  # small objects dropped, the others numbered by their first pixel
        if k and area[k] >= min_area:
            number += 1
            out[lab == k] = number
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
def test_instances_equal_their_definition_on_random_class_maps(connectivity):
    rng = np.random.default_rng(connectivity)
    for trial in range(60):
        h, w = rng.integers(1, 40, 2)
        if trial % 2:  # salt and pepper: ties between seeds, holes, specks everywhere
            classes = rng.choice(3, size=(h, w), p=rng.dirichlet([1, 1, 1])).astype(np.uint8)
        else:  # blobs: bands, touching objects, long protrusions
            f = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(1, 3))
            lo, hi = np.quantile(f, [rng.uniform(0.3, 0.6), rng.uniform(0.7, 0.95)])
            classes = np.where(f > hi, 1, np.where(f > lo, 2, 0)).astype(np.uint8)
        for max_grow, min_area in ((0, 0), (1, 4), (2, 0), (3, 1), (8, 4)):
            np.testing.assert_array_equal(
                instances_from_classes(classes, min_area, connectivity, max_grow),
                reference_instances(classes, min_area, connectivity, max_grow),
                err_msg=f"trial {trial}, max_grow {max_grow}, min_area {min_area}",
            )


# --- instances_from_classes: the round trip on real annotations ---------------------------------------------------


def test_round_trip_reproduces_the_annotated_nuclei(aits):
    """instances_from_classes(classes_from_instances(L)) == L on the 40 annotated frames, micronuclei included."""
    n_truth = n_pred = n_match = n_good = 0
    fg_pixels = fg_agree = 0
    small_truth = small_found = 0
    for split in ("train", "val"):
        for labels in real_masks(aits, split):
            pred = instances_from_classes(classes_from_instances(labels))
            iou = iou_matrix(labels, pred)
            best = iou.max(1)
            n_truth += iou.shape[0]
            n_pred += iou.shape[1]
            n_match += int((iou >= 0.9).sum())
            n_good += int((best >= 0.99).sum())
            # pixel agreement: foreground pixels that land in the object matched to their own
            match = np.concatenate([[0], iou.argmax(1) + 1])
            fg = labels > 0
            fg_pixels += int(fg.sum())
            fg_agree += int((match[labels[fg]] == pred[fg]).sum())
            area = np.bincount(labels.ravel())[1:]
            small = area < 100
            small_truth += int(small.sum())
            small_found += int((best[small] >= 0.9).sum())
    f1 = 2 * n_match / (n_truth + n_pred)
    assert n_truth > 1500
    assert f1 >= 0.998, f1  # measured 0.9994
    assert n_good / n_truth >= 0.99, (n_good, n_truth)  # measured 1,649 of 1,658 at IoU >= 0.99
    assert fg_agree / fg_pixels >= 0.99998, fg_agree / fg_pixels  # measured 33 wrong of ~2.5 M
    # Micronuclei and fragments (< 100 px) are kept: measured 235 of 236 at IoU >= 0.9 (one loses band pixels to a
    # neighbour; the 3-px-wide sliver whose deepest pixels are separate spots comes back whole since the target joins
    # its interior pieces).
    assert small_truth > 150 and small_found >= small_truth - 1, (small_found, small_truth)


def test_round_trip_4_connected(aits):
    # The target is drawn for 8-connected objects (an interior can hang together by a corner), so 4-connectivity
    # splits the odd nucleus; most still come back.
    matched = total = 0
    for labels in real_masks(aits, count=6):
        iou = iou_matrix(labels, instances_from_classes(classes_from_instances(labels), connectivity=4))
        matched += int((iou.max(1) >= 0.9).sum())
        total += iou.shape[0]
    assert matched / total >= 0.98, (matched, total)


# --- instances_from_classes: behaviour on small hand-made class maps ---------------------------------------------


def classes_of(labels: np.ndarray) -> np.ndarray:
    return classes_from_instances(np.asarray(labels, np.int32))


def test_touching_squares_stay_two_objects():
    labels = np.zeros((20, 30), np.int32)
    labels[3:15, 2:14] = 1
    labels[3:15, 14:26] = 2  # shares a full edge with the first square
    classes = classes_of(labels)
    assert set(np.unique(classes[3:15, 12:16])) == {2}  # separated by boundary
    np.testing.assert_array_equal(instances_from_classes(classes), labels)


def test_objects_are_numbered_in_raster_order_of_first_pixel():
    labels = np.zeros((30, 30), np.int32)
    labels[10:20, 2:10] = 1
    labels[2:8, 20:28] = 2  # starts in an earlier row, so it must become object 1
    pred = instances_from_classes(classes_of(labels))
    assert pred[2, 20] == 1 and pred[10, 2] == 2


def test_boundary_without_interior_gives_nothing():
    classes = np.zeros((12, 12), np.uint8)
    classes[2:10, 2:10] = 2
    classes[4:8, 4:8] = 0  # a ring of boundary around background
    assert instances_from_classes(classes).max() == 0
    classes[4:8, 4:8] = 2  # a solid blob of boundary
    assert instances_from_classes(classes).max() == 0


def test_holes_enclosed_by_one_object_are_filled():
    classes = np.zeros((20, 20), np.uint8)
    classes[2:14, 2:14] = 2
    classes[4:12, 4:12] = 1
    classes[6:8, 6:8] = 0  # background hole in the interior
    classes[10, 9] = 2  # a boundary pixel inside the interior
    expected = np.zeros((20, 20), np.int32)
    expected[2:14, 2:14] = 1
    np.testing.assert_array_equal(instances_from_classes(classes), expected)
    # without growth the band stays background (it reaches the outside), the enclosed boundary pixel is a hole
    expected[:] = 0
    expected[4:12, 4:12] = 1
    np.testing.assert_array_equal(instances_from_classes(classes, max_grow=0), expected)


def test_holes_not_filled_when_shared_or_open():
    labels = np.zeros((20, 26), np.int32)
    labels[2:18, 0:12] = 1
    labels[2:18, 12:24] = 2
    labels[8:12, 10:14] = 0  # a pocket on the contact line, bordered by both objects
    labels[12:15, 0:4] = 0  # a pocket in object 1 open to the image edge
    pred = instances_from_classes(classes_of(labels))
    np.testing.assert_array_equal(pred, labels)


def test_unreachable_boundary_and_max_grow():
    classes = np.zeros((5, 30), np.uint8)
    classes[1:4, 1:4] = 1
    classes[2, 4:25] = 2  # a long tail of boundary pixels
    out = instances_from_classes(classes, max_grow=6, min_area=0)
    assert out[2, 4 + 5] == 1 and out[2, 4 + 6] == 0  # 6 growth steps claim tail pixels 0..5
    assert instances_from_classes(classes, max_grow=0, min_area=0).sum() == 9  # only the interior
    assert (instances_from_classes(classes, max_grow=100, min_area=0)[2, 4:25] == 1).all()


def test_boundary_split_by_geodesic_distance():
    # two seeds joined by a corridor of boundary pixels: each takes the half nearer to it
    classes = np.zeros((5, 23), np.uint8)
    classes[1:4, 1:4] = 1
    classes[1:4, 19:22] = 1
    classes[2, 4:19] = 2  # 15 boundary pixels, 4..18
    out = instances_from_classes(classes, max_grow=20)
    assert (out[2, 4:11] == 1).all() and (out[2, 12:19] == 2).all()  # 7 each side; the middle one is a tie
    assert out[2, 11] == 1  # the tie goes to the seed that reaches it first (seed 1 comes first in raster order)


def test_small_objects_dropped_and_renumbered():
    classes = np.zeros((20, 20), np.uint8)
    classes[1:3, 1:3] = 1  # 4 px
    classes[5, 5] = 1  # 1 px speck
    classes[10:16, 10:16] = 1
    out = instances_from_classes(classes, min_area=4)
    assert out.max() == 2 and out[5, 5] == 0 and out[1, 1] == 1 and out[10, 10] == 2
    assert instances_from_classes(classes, min_area=5).max() == 1
    assert instances_from_classes(classes, min_area=0).max() == 3


def test_degenerate_shapes():
    assert instances_from_classes(np.zeros((0, 7), np.uint8)).shape == (0, 7)
    assert instances_from_classes(np.ones((1, 1), np.uint8), min_area=1)[0, 0] == 1
    line = np.array([[1, 1, 2, 2, 0, 2, 1]], np.uint8)
    np.testing.assert_array_equal(instances_from_classes(line, min_area=1), [[1, 1, 1, 1, 0, 2, 2]])


@pytest.mark.parametrize(
    "class_map, kwargs",
    [
        (np.zeros((4, 4), np.int32), {}),
        (np.zeros((4, 4), np.float32), {}),
        (np.zeros((2, 4, 4), np.uint8), {}),
        (np.full((4, 4), 3, np.uint8), {}),
        (np.zeros((4, 4), np.uint8), {"connectivity": 6}),
        (np.zeros((4, 4), np.uint8), {"min_area": -1}),
        (np.zeros((4, 4), np.uint8), {"max_grow": -1}),
    ],
)
def test_instances_rejects_bad_input(class_map, kwargs):
    with pytest.raises(ValueError):
        instances_from_classes(class_map, **kwargs)


def test_threads_give_the_same_result(aits):
    # frames of two shapes, so the threads' scratch buffers are also rebuilt between calls
    classes = [classes_from_instances(labels) for labels in real_masks(aits, count=4)]
    classes += [c[: 500 + 37 * k, 100:] for k, c in enumerate(classes)]
    expected = [instances_from_classes(c) for c in classes]
    expected_cc = [connected_components(c > 0) for c in classes]
    for threads in (2, 4):
        with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(instances_from_classes, classes * 3))
            got_cc = list(pool.map(lambda c: connected_components(c > 0), classes * 2))
        for k, g in enumerate(got):
            np.testing.assert_array_equal(g, expected[k % len(classes)])
        for k, g in enumerate(got_cc):
            np.testing.assert_array_equal(g, expected_cc[k % len(classes)])
