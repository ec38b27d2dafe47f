"""Object intensity features (kernels/intensity.py) exactly as scikit-image's regionprops and cp_measure
(CellProfiler's MeasureObjectIntensity in Python) compute them, on the lab's real frames: the Hoechst frames serve
as the measured channel, their annotated nuclei as the objects, raw and illumination-corrected (float) values."""

from pathlib import Path

import numpy as np
import pytest

from nucleiscreen.engine.readers import read_frame
from nucleiscreen.kernels.intensity import FEATURES, object_intensities

skimage_measure = pytest.importorskip("skimage.measure")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aitslab-bioimaging1" / "val"


@pytest.fixture(scope="module")
def frames():
    pairs = [(read_frame(p), read_frame(DATA / "masks" / f"{p.stem}.tif").astype(np.int32))
             for p in sorted((DATA / "images").glob("*.png"))[:3]]
    if not pairs:
        pytest.skip("the lab's validation frames are not in ../shared/data")
    rng = np.random.default_rng(0)
    # the same frames as a 16-bit camera's counts and as illumination-corrected floats
    return [(img.astype(np.uint16) * 257 + 300, lab) for img, lab in pairs] + \
        [((img * rng.uniform(0.9, 1.1, img.shape)).astype(np.float32), lab) for img, lab in pairs]


def test_features_equal_scikit_image(frames):
    for image, labels in frames:
        mine = object_intensities(labels, image)
        # (in float64: scikit-image averages a float32 image in float32, good to ~1e-7)
        props = skimage_measure.regionprops(labels, intensity_image=image.astype(np.float64))
        ids = np.array([p.label for p in props])
        values = [p.image_intensity[p.image].astype(np.float64) for p in props]
        theirs = {"IntegratedIntensity": [v.sum() for v in values], "MeanIntensity": [p.intensity_mean for p in props],
                  "StdIntensity": [p.intensity_std for p in props], "MinIntensity": [p.intensity_min for p in props],
                  "MaxIntensity": [p.intensity_max for p in props], "MedianIntensity": [np.median(v) for v in values]}
        assert (mine.area[ids - 1] == [p.area for p in props]).all()
        for name, value in mine.features().items():
            np.testing.assert_allclose(value[ids - 1], theirs[name], rtol=1e-9, err_msg=name)


def test_features_equal_cp_measure(frames):
    cp = pytest.importorskip("cp_measure.core.measureobjectintensity")
    for image, labels in frames:
        relabelled = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)  # 1..N
        mine = object_intensities(relabelled, image).features()
        theirs = cp.get_intensity(relabelled, image.astype(np.float64), edge_measurements=False)
        for name in FEATURES:
            np.testing.assert_allclose(mine[name], theirs[f"Intensity_{name}"], rtol=1e-9, err_msg=name)


def test_absent_ids_border_and_no_median():
    labels = np.zeros((6, 6), np.int32)
    labels[0, 0:2] = 1
    labels[2:4, 2:4] = 3
    image = np.arange(36, dtype=np.uint16).reshape(6, 6)
    out = object_intensities(labels, image)
    assert list(out.area) == [2, 0, 4] and list(out.touches) == [True, False, False]
    assert np.isnan(out.mean[1]) and np.isnan(out.median[1]) and out.median[2] == np.median([14, 15, 20, 21])
    assert np.isnan(object_intensities(labels, image, median=False).median).all()
    assert object_intensities(labels, image, n=1).area.size == 1
    with pytest.raises(ValueError, match="one shape"):
        object_intensities(labels, image[:5])


def test_illumination_applied_as_read_equals_the_corrected_image(frames):
    from nucleiscreen.kernels.illumination import correct

    image, labels = frames[0]
    rng = np.random.default_rng(3)
    background = rng.uniform(250, 350, image.shape).astype(np.float32)
    inverse = rng.uniform(0.7, 1.0, image.shape).astype(np.float32)
    on_the_fly = object_intensities(labels, image, illumination=(background, inverse, 310.0))
    made = object_intensities(labels, correct(image, background, inverse, 310.0).astype(np.float64))
    for name, value in on_the_fly.features().items():
        np.testing.assert_allclose(value, made.features()[name], rtol=1e-6, err_msg=name)
    assert on_the_fly.image_mean == pytest.approx(made.image_mean, rel=1e-6)
    quick = object_intensities(labels, image, median=False, spread=False)
    assert np.isnan(quick.std).all() and np.isnan(quick.median).all()
    np.testing.assert_array_equal(quick.mean, object_intensities(labels, image).mean)
