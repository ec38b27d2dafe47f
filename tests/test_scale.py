"""--pixel-size auto: the scale estimate keeps the model's scale on the lab's frames and finds the factor of resized
copies of them (within 10 %)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.scale import ScaleEstimate, estimate_scale, sample_rows, sample_scale
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.kernels.measure import typical_area
from nucleiscreen.kernels.resize import resize

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aitslab-bioimaging1" / "val" / "images"


@pytest.fixture(scope="module")
def seg():
    return Segmenter()


@pytest.fixture(scope="module")
def lab_frames():
    paths = sorted(VAL.glob("*.png"))[:4]
    if not paths:
        pytest.skip("the lab's validation frames are not in ../shared/data")
    return paths


def test_lab_frames_keep_the_model_scale(seg, lab_frames):
    est = sample_scale(seg, lab_frames)
    assert est.scale == 1.0 and "kept" in est.note and est.nuclei >= 20
    assert abs(np.sqrt(seg.info.card["nucleus_area_px"] / est.nucleus_area) - 1) < 0.05


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5])
def test_resized_lab_frames_give_their_factor(seg, lab_frames, tmp_path, factor):
    paths = []
    for p in lab_frames:
        raw = read_frame(p)
        size = (round(raw.shape[0] * factor), round(raw.shape[1] * factor))
        small = np.clip(resize(raw.astype(np.float32), size) + 0.5, 0, 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / f"{p.stem}.tif", small)
        paths.append(tmp_path / f"{p.stem}.tif")
    est = sample_scale(seg, paths)
    assert abs(est.scale * factor - 1) < 0.10, est  # the frames go back to the model's size


def test_typical_area_ignores_border_objects_and_fragments():
    lab = np.zeros((60, 60), np.int32)
    lab[10:20, 10:20] = 1  # 100 px
    lab[30:40, 30:41] = 2  # 110 px
    lab[45:55, 5:16] = 3  # 110 px
    lab[25, 50] = 4  # a 1-px fragment
    lab[0:30, 0:3] = 5  # on the border
    assert typical_area([lab]) == (110.0, 3)
    assert typical_area([np.zeros((8, 8), np.int32)]) == (None, 0)


def test_too_few_nuclei_or_no_card_area_keep_the_model_scale():
    one = np.zeros((40, 40), np.int32)
    one[10:20, 10:20] = 1
    est = estimate_scale(lambda s: [one], 1000.0)
    assert est == ScaleEstimate(1.0, 100.0, 1, est.note) and "too few" in est.note
    assert estimate_scale(lambda s: [one], None).scale == 1.0
    many = np.zeros((200, 200), np.int32)
    for i in range(25):  # 25 nuclei of 100 px against a model's 400: frames are doubled
        r, c = divmod(i, 5)
        many[10 + 35 * r:20 + 35 * r, 10 + 35 * c:20 + 35 * c] = i + 1
    assert estimate_scale(lambda s: [many], 400.0).scale == pytest.approx(2.0)


def test_sample_rows_take_every_row_of_a_small_plate_and_spread_over_a_large_one():
    assert sample_rows(4, 32) == [0, 1, 2, 3]
    assert sample_rows(1, 8) == [0]
    rows = sample_rows(6144, 8)
    assert len(rows) == 8 and rows[0] == 0 and rows[-1] == 6143
