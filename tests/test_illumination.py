"""Illumination correction (kernels/illumination.py, engine/illumination.py): on frames with a 30 % vignetting fall-off
at the corners, camera offset and background glow, identical objects come out within 3 % of each other across the
field after correction; functions are estimated once per plate and channel and kept in RUN/illum/."""

import numpy as np
import polars as pl
import pytest

from nucleiscreen.kernels.illumination import block_mean, correct, illumination_function

SIZE = 384


def _vignette(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return 1.0 - 0.3 * (((yy - size / 2) / size) ** 2 + ((xx - size / 2) / size) ** 2) * 2  # 30 % at the corners


def _frame(rng, centres, vignette, radius=9, brightness=None):
    """Raw counts: an offset of 300, a glow of 30 and disks of 800 (or ``brightness``), all but the offset
    vignetted, with shot and read noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    signal = np.full((SIZE, SIZE), 30.0)
    for cy, cx in centres:
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        signal[disk] = brightness or 800 * rng.lognormal(0, 0.15)
    raw = rng.poisson(signal * vignette / 2) * 2 + 300 + rng.normal(0, 6, signal.shape)
    return np.clip(raw, 0, 65535).astype(np.uint16)


def test_identical_objects_are_alike_across_the_field_after_correction():
    rng = np.random.default_rng(0)
    vignette = _vignette()
    sample = [block_mean(_frame(rng, rng.uniform(-9, SIZE + 9, (180, 2)), vignette)) for _ in range(64)]
    f = illumination_function(np.stack(sample), (SIZE, SIZE))
    assert 0.25 <= f.falloff <= 0.35 and 300 < f.b0 < 330
    spots = [(12, 12), (12, SIZE - 12), (SIZE - 12, 12), (SIZE - 12, SIZE - 12), (SIZE // 2, SIZE // 2),
             (SIZE // 2, 12), (12, SIZE // 2), (100, 250)]
    test = _frame(rng, spots, vignette, brightness=800)
    corrected = correct(test, *f.at_frame_size(), f.b0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]

    def spread(image):
        means = [image[(yy - cy) ** 2 + (xx - cx) ** 2 < 7**2].mean() for cy, cx in spots]
        return (max(means) - min(means)) / np.mean(means)

    assert spread(test) > 0.2  # uncorrected: the fall-off
    assert spread(corrected) <= 0.03
    # the background comes out level at b0
    empty = corrected[test < 360]
    assert abs(np.median(empty) - f.b0) < 10


def test_a_sample_without_specimen_gives_a_flat_function():
    rng = np.random.default_rng(1)
    blank = [block_mean(rng.normal(300, 5, (64, 64))) for _ in range(8)]
    f = illumination_function(np.stack(blank), (64, 64))
    assert (f.flat == 1).all() and f.falloff == 0.0
    with pytest.raises(ValueError, match="stack"):
        illumination_function(np.zeros((0, 4, 4)), (32, 32))
    with pytest.raises(ValueError, match="shape"):
        correct(np.zeros((4, 4)), np.zeros((4, 4)), np.ones((5, 5)), 0.0)


def test_a_run_estimates_each_plates_functions_once_and_measures_corrected_markers(tmp_path, capsys):
    from nucleiscreen.cli import main
    from nucleiscreen.engine.illumination import read_function
    from nucleiscreen.simulate import simulate_screen

    sim = simulate_screen(tmp_path / "sim", plates=1, fields=1, size=128, seed=2, masks=False, channels=3)
    out = tmp_path / "run"
    args = ["--quiet", "segment", str(sim.images), "--out", str(out), "--channels", "DNA=d0,Lyso=d1,Cell=d2",
            "--pixel-size", "model"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "illumination of" in printed and "Lyso" in printed and "Cell" in printed
    functions = sorted((out / "illum").rglob("*.tif"))
    assert [p.name for p in functions] == ["Cell.tif", "Lyso.tif"]  # the markers', not the nuclei channel's
    f = read_function(functions[1])
    assert f.shape == (128, 128) and f.flat.min() == pytest.approx(1.0)
    stamp = functions[1].stat().st_mtime_ns
    images = pl.read_parquet(out / "images" / "**" / "*.parquet")
    for name in ("Lyso", "Cell", "DNA"):
        assert {f"Intensity_MeanIntensity_{name}", f"Mean_Nuclei_Intensity_MeanIntensity_{name}",
                f"ImageQuality_FocusScore_{name}"} <= set(images.columns)
    lyso, dna = images["Mean_Nuclei_Intensity_MeanIntensity_Lyso"], images["Mean_Nuclei_Intensity_MeanIntensity_DNA"]
    assert (lyso.is_null() == dna.is_null()).all() and lyso.drop_nulls().len() > 50  # the same nuclei counted
    # a resume reuses the functions; other illumination settings are refused
    assert main(args) == 0 and functions[1].stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main([*args, "--illum", "none"]) == 2 and "illum" in capsys.readouterr().err
