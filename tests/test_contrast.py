import numpy as np
import pytest
import tifffile

from nucleiscreen.cli import main
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.contrast import INNER, OUTER, erase_faint, object_contrast
from nucleiscreen.kernels.instances import instances_from_classes


def _scene():
    """Background 0.1; a bright spot (mean 0.6), a faint spot (0.15), a large dim nucleus (0.2) next to the faint
    spot's ring, and a spot in the frame's corner."""
    image = np.full((80, 80), 0.1, np.float32)
    labels = np.zeros((80, 80), np.int32)
    labels[10:14, 10:14], image[10:14, 10:14] = 1, 0.6
    labels[40:43, 40:43], image[40:43, 40:43] = 2, 0.15
    labels[44:64, 50:70], image[44:64, 50:70] = 3, 0.2  # 400 px: above max_area, never tested
    labels[0:3, 77:80], image[0:3, 77:80] = 4, 0.5
    return labels, image


def test_contrast_is_mean_minus_the_median_of_the_background_ring():
    labels, image = _scene()
    image[10:14, 10:14] = [[0.4], [0.6], [0.6], [0.8]]  # mean 0.6
    image[10 - OUTER, 10 - OUTER:14 + OUTER] = 0.9  # one brighter ring row: the median ignores it
    c = object_contrast(labels, image, max_area=300)
    assert c[1] == pytest.approx(0.5)
    assert c[2] == pytest.approx(0.05)  # object 3's pixels inside its ring are not background
    assert c[3] == np.inf and c[0] == np.inf
    assert c[4] == pytest.approx(0.4)  # the ring is clipped to the frame
    image[:] = 0.1
    image[10 - INNER:14 + INNER, 10 - INNER:14 + INNER] = 0.5  # within INNER px of the box: not ring
    image[10:14, 10:14] = 0.6
    assert object_contrast(labels, image)[1] == pytest.approx(0.5)


def test_object_without_background_around_it_is_kept():
    labels = np.ones((10, 10), np.int32)
    labels[4:6, 4:6] = 2
    c = object_contrast(labels, np.zeros((10, 10), np.float32))
    assert c[2] == np.inf


def test_erase_faint_removes_only_faint_small_objects():
    labels, image = _scene()
    classes = (labels > 0).astype(np.uint8)
    out = erase_faint(classes, labels, image, min_contrast=0.1)
    assert out is not classes and classes[41, 41] == 1  # the input is not modified
    kept = np.unique(labels[out > 0])
    assert kept.tolist() == [1, 3, 4]
    assert erase_faint(classes, labels, image, min_contrast=0.04) is classes  # nothing under 0.04
    assert erase_faint(classes, labels, image, min_contrast=0.0) is classes
    with pytest.raises(ValueError, match="shape"):
        object_contrast(labels, image[:10])
    with pytest.raises(ValueError, match="shape"):
        erase_faint(classes[:40], labels, image, min_contrast=0.1)


def test_edge_slivers_are_erased_by_area_whatever_their_contrast():
    labels, image = _scene()  # object 4: 9 px in the frame's corner; object 1: 16 px inside
    labels[30:80, 0:2], image[30:80, 0:2] = 5, 0.6  # 100 px along the left edge
    classes = (labels > 0).astype(np.uint8)
    out = erase_faint(classes, labels, image, min_contrast=0.0, min_edge_area=20)
    assert np.unique(labels[out > 0]).tolist() == [1, 2, 3, 5]  # only the sliver; the faint spot 2 stays
    out = erase_faint(classes, labels, image, min_contrast=0.1, min_edge_area=101)
    assert np.unique(labels[out > 0]).tolist() == [1, 3]  # the faint spot, the sliver and the 100-px edge object
    assert erase_faint(classes, labels, image, min_contrast=0.0, min_edge_area=9) is classes  # 9 px is not under 9
    assert erase_faint(classes, labels, image, min_contrast=0.0, min_edge_area=0) is classes


def test_small_objects_grow_into_the_bright_pixels_of_their_outer_ring():
    image = np.full((40, 40), 0.1, np.float32)
    labels = np.zeros((40, 40), np.int32)
    labels[10:13, 10:13], image[10:13, 10:13] = 1, 0.5  # 9 px, contrast 0.4: level 0.1 + 0.5 * 0.4 = 0.3
    image[9, 10:13] = 0.35  # above the level: grows
    image[13, 10:13] = 0.25  # below: stays background
    image[11, 13] = 0.9  # bright, but an interior pixel of the class map (a seed under min_area, label 0): left
    image[11, 9] = 0.9  # bright, next to the object: grows
    labels[30:40, 30:40], image[30:40, 30:40] = 2, 0.5  # 100 px: not under grow_area
    image[29, 30:40] = 0.9
    classes = (labels > 0).astype(np.uint8)
    classes[11, 13] = 1
    out = erase_faint(classes, labels, image, min_contrast=0.0, grow_area=50, grow_level=0.5)
    grown = np.argwhere(out != classes)
    assert sorted(map(tuple, grown)) == [(9, 10), (9, 11), (9, 12), (11, 9)] and (out[tuple(grown.T)] == 2).all()
    again = instances_from_classes(out, min_area=1)
    assert (again[9, 10:13] == again[11, 11]).all() and again[11, 11] > 0  # the seed takes its grown pixels
    higher = erase_faint(classes, labels, image, min_contrast=0.0, grow_area=50, grow_level=0.7)
    assert np.argwhere(higher != classes).tolist() == [[11, 9]]  # level 0.38: only the 0.9 pixel
    assert erase_faint(classes, labels, image, min_contrast=0.0, grow_area=5, grow_level=0.5) is classes
    image[20:22, 20:22], labels[20:22, 20:22], classes[20:22, 20:22] = 0.05, 3, 1  # darker than its background
    out = erase_faint(classes, labels, image, min_contrast=0.0, grow_area=50, grow_level=0.5)
    assert (out[20:22, 20:22] == 1).all()  # measured for the growth, not erased: the filter is off
    out = erase_faint(classes, labels, image, min_contrast=0.45, grow_area=50, grow_level=0.5)
    assert out[10:13, 10:13].sum() == 0 and out[9].sum() == 0  # a faint object is erased, not grown


def test_growth_never_bridges_to_another_object_or_to_unclaimed_boundary():
    image = np.full((30, 40), 0.1, np.float32)
    labels = np.zeros((30, 40), np.int32)
    classes = np.zeros((30, 40), np.uint8)
    image[8:16, 2:30] = 0.6  # a bright streak under everything
    labels[10:14, 10:14] = 1  # a spot ...
    labels[10:14, 5:9] = 3  # ... with another one column 9 away on its left
    classes[10:14, 16:20] = 2  # a boundary blob no seed reached (label 0), column 15 away on its right
    labels[10:14, 21:25] = 2  # and another spot beyond the blob, column 20 away
    classes[labels > 0] = 1
    image[labels > 0] = 0.9
    out = erase_faint(classes, labels, image, min_contrast=0.0, grow_area=50, grow_level=0.5)
    grown = {tuple(p) for p in np.argwhere(out != classes)}
    assert {(9, 10), (9, 13), (14, 12)} <= grown and (11, 14) in grown  # the spot's free ring grows ...
    assert not {x for _, x in grown} & {9, 15, 20}  # ... not the columns that touch another object or the blob
    again = instances_from_classes(out, min_area=1)
    assert (again[10:14, 16:20] == 0).all() and again.max() == 3  # the blob stays unclaimed


def test_segmenter_applies_the_cards_edge_limit_unless_overridden(tmp_path, capsys):
    seg = Segmenter()
    post = seg.info.postprocessing
    assert seg.post.min_edge_area == post.get("min_edge_area", 0)
    assert (seg.post.grow_area, seg.post.grow_level) == (post.get("grow_area", 0), post.get("grow_level", 0.5))
    seg = Segmenter(overrides={"min_contrast": 0.0, "min_area": 4, "grow_area": 0, "min_edge_area": 25})
    classes = np.zeros((64, 64), np.uint8)
    classes[0:4, 20:26] = classes[30:34, 30:34] = 1  # 24 px at the top edge, 16 px inside
    raw = np.where(classes > 0, 9000, 1000).astype(np.uint16)
    labels = seg.instances(classes, raw)
    assert labels.max() == 1 and labels[31, 31] == 1
    assert Segmenter(overrides={"min_edge_area": 0}).post.min_edge_area == 0
    assert Segmenter(overrides={"grow_area": 0}).post.grow_area == 0
    tifffile.imwrite(tmp_path / "a.tif", raw)
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--min-edge-area", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-edge-area") and "Traceback" not in err
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--grow-area", "-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --grow-area") and "Traceback" not in err


def test_an_id_on_distant_pixels_is_measured_over_its_whole_box():
    """Labels need not be connected (a cropped or relabelled image): the ring buffer holds the whole grown box."""
    image = np.full((300, 300), 0.1, np.float32)
    labels = np.zeros((300, 300), np.int32)
    labels[5, 5] = labels[290, 290] = 1
    image[5, 5] = image[290, 290] = 0.7
    assert object_contrast(labels, image)[1] == pytest.approx(0.6)


def test_a_wider_ring_reaches_past_a_bright_halo():
    labels, image = _scene()
    image[10 - OUTER:14 + OUTER, 10 - OUTER:14 + OUTER] = 0.5  # a halo filling the default ring
    image[10:14, 10:14] = 0.6
    assert object_contrast(labels, image)[1] == pytest.approx(0.1)
    assert object_contrast(labels, image, ring=(OUTER, OUTER + 4))[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ring"):
        object_contrast(labels, image, ring=(3, 3))


def test_segmenter_applies_the_cards_filter():
    seg = Segmenter()
    assert seg.post.min_contrast == seg.info.postprocessing.get("min_contrast", 0.0)
    # the 16-px objects below stay, whatever the card's area limit
    seg = Segmenter(overrides={"min_contrast": 0.0, "min_area": 4})
    classes = np.zeros((64, 64), np.uint8)
    classes[10:14, 10:14] = 1
    classes[40:44, 40:44] = 1
    raw = np.full((64, 64), 1000, np.uint16)
    raw[10:14, 10:14] = 9000  # stands out
    raw[40:44, 40:44] = 1400  # faint: 0.05 of the frame's range
    assert seg.instances(classes, raw).max() == 2
    seg = Segmenter(overrides={"min_contrast": 0.1, "min_area": 4})
    labels = seg.instances(classes, raw)
    assert labels.max() == 1 and labels[12, 12] == 1
    lab, summary = seg.measure(classes, raw, objects=False, labels=True, micronucleus_area=100)[:2]
    assert (lab == labels).all() and summary["Count_Micronuclei"] == 1  # 16 px: a micronucleus
    assert (instances_from_classes(classes, **seg.post.instance_args) > 0).sum() == 32  # the filter did it


def test_min_contrast_overrides_the_card(tmp_path, capsys):
    assert Segmenter(overrides={"min_contrast": 0.0}).post.min_contrast == 0.0
    assert Segmenter(overrides={"min_contrast": 0.3}).post.min_contrast == 0.3
    with pytest.raises(UserError, match="min-contrast"):
        Segmenter(overrides={"min_contrast": 1.5})
    tifffile.imwrite(tmp_path / "a.tif", np.full((64, 64), 100, np.uint16))
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--min-contrast", "-0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-contrast") and "Traceback" not in err
