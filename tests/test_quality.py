import numpy as np
import pytest

from nucleiscreen.kernels.quality import frame_quality
from nucleiscreen.simulate import gaussian_blur, synth_frame


def test_matches_cellprofiler_definition():
    x = np.random.default_rng(0).integers(0, 4000, (40, 50)).astype(np.uint16)
    q = frame_quality(x)
    scaled = x / 65535.0
    assert q["ImageQuality_FocusScore_DNA"] == pytest.approx(scaled.var() / scaled.mean(), rel=1e-9)
    assert q["ImageQuality_PercentMaximal_DNA"] == pytest.approx(100 * (x == x.max()).mean())


def test_blur_lowers_focus_and_saturation_shows():
    img, _ = synth_frame(np.random.default_rng(1), (256, 256))
    scores = [frame_quality(np.clip(gaussian_blur(img, s), 0, 65535).astype(np.uint16))["ImageQuality_FocusScore_DNA"]
              for s in (0.0, 2.0, 4.0, 8.0)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.9 * scores[0]  # a whole-frame score: weak
    sat = img.copy()
    sat[:64] = 65535
    assert frame_quality(sat)["ImageQuality_PercentMaximal_DNA"] == pytest.approx(25.0, abs=0.1)


def test_empty_and_bad_frames():
    assert frame_quality(np.zeros((4, 4), np.uint8))["ImageQuality_FocusScore_DNA"] == 0.0
    with pytest.raises(ValueError):
        frame_quality(np.zeros((2, 2, 2), np.uint16))
