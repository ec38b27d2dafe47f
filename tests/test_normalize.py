import numpy as np
import pytest

from nucleiscreen.kernels.normalize import Normalization, normalize, percentiles
from nucleiscreen.simulate import FrameSpec, synth_frame


def test_histogram_percentiles_match_numpy_inverted_cdf():
    rng = np.random.default_rng(0)
    for dtype, hi in ((np.uint16, 65535), (np.uint8, 255)):
        frame = rng.integers(0, hi, (123, 77)).astype(dtype)
        lo_, hi_ = percentiles(frame, 0.1, 99.9)
        assert lo_ == np.percentile(frame, 0.1, method="inverted_cdf")
        assert hi_ == np.percentile(frame, 99.9, method="inverted_cdf")


def test_normalize_stretches_percentiles_to_unit_range():
    frame = np.arange(10000, dtype=np.uint16).reshape(100, 100) + 500
    out = normalize(frame, Normalization(min_ratio=1.0))
    assert out.dtype == np.float32
    lo, hi = np.percentile(frame, [0.1, 99.9], method="inverted_cdf")
    expected = np.clip((frame.astype(np.float64) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_background_only_frame_stays_dark():
    rng = np.random.default_rng(1)
    empty, labels = synth_frame(rng, (256, 256), FrameSpec(nuclei_per_frame=0.0, micronuclei_fraction=0.0))
    assert labels.max() == 0
    out = normalize(empty)
    # Without the contrast floor the noise would be stretched over [0, 1].
    assert np.percentile(out, 99) < 0.15
    stretched = normalize(empty, Normalization(min_ratio=1.0))
    assert np.percentile(stretched, 99) > 0.5


def test_frames_with_nuclei_are_not_affected_by_the_floor():
    img, labels = synth_frame(np.random.default_rng(2), (512, 512))
    a = normalize(img)
    b = normalize(img, Normalization(min_ratio=1.0))
    np.testing.assert_array_equal(a, b)
    assert a[labels > 0].mean() > 0.3


def test_out_buffer_and_float16():
    img, _ = synth_frame(np.random.default_rng(3), (64, 96))
    buf = np.zeros((2, 64, 96), np.float16)
    normalize(img, out=buf[1])
    np.testing.assert_allclose(buf[1], normalize(img), atol=1e-3)
    assert not buf[0].any()


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        normalize(np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(ValueError, match="dtype"):
        normalize(np.zeros((3, 4), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_empty_frame_is_a_value_error(dtype, shape):
    """Found by tests/test_fuzz.py: a float frame raised IndexError, an integer one normalized from lo = -1."""
    for call in (normalize, percentiles):
        with pytest.raises(ValueError, match=r"an empty frame \(shape .*\) has no percentiles"):
            call(np.zeros(shape, dtype))
