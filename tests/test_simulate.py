import csv

import numpy as np
import pytest
import tifffile

from nucleiscreen.engine.discover import discover
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.screen.layout import read_layout
from nucleiscreen.errors import UserError
from nucleiscreen.simulate import PLANTED, FrameSpec, plan_screen, simulate_screen, synth_frame


def test_frame_is_deterministic_and_realistic():
    a, la = synth_frame(np.random.default_rng(5), (1104, 1104))
    b, lb = synth_frame(np.random.default_rng(5), (1104, 1104))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.dtype == np.uint16 and la.dtype == np.uint16
    areas = np.bincount(la.ravel())[1:]
    assert la.max() == areas.size and (areas > 0).all()  # ids 1..N, none empty
    assert 900 < np.median(areas[areas >= 100]) < 2500  # real median nucleus ~1,500 px
    assert 0.03 < (areas < 100).mean() < 0.3  # micronuclei and fragments (real: ~14 %)
    # nuclei are brighter than the background, which shows a cytoplasm glow above the camera offset
    fg, bg = a[la > 0].astype(float), a[la == 0].astype(float)
    assert np.median(fg) > 3 * np.median(bg)
    assert np.percentile(bg, 90) > np.percentile(bg, 10) + 50


def test_mask_agrees_with_image():
    img, lab = synth_frame(np.random.default_rng(6), (512, 512))
    # each nucleus is brighter inside than in a ring just outside it
    from scipy import ndimage as ndi

    for k in range(1, lab.max() + 1):
        obj = lab == k
        if obj.sum() < 300:
            continue
        ring = ndi.binary_dilation(obj, iterations=6) & ~ndi.binary_dilation(obj, iterations=3) & (lab == 0)
        if ring.sum() > 20:
            assert img[obj].mean() > 1.3 * img[ring].mean()


def test_area_and_density_phenotypes():
    def stats(spec):
        counts, areas = [], []
        for s in range(6):
            _, lab = synth_frame(np.random.default_rng(s), (600, 600), spec)
            a = np.bincount(lab.ravel())[1:]
            counts.append((a >= 100).sum())
            areas.extend(a[a >= 100])
        return np.mean(counts), np.median(areas)

    c1, a1 = stats(FrameSpec())
    c2, a2 = stats(FrameSpec(nuclei_per_frame=60 * 0.3, area_scale=2.2))
    assert c2 / c1 < 0.5 and a2 / a1 > 1.7


def test_plan_controls_and_planted_genes():
    plan = plan_screen(plates=3, wells_per_gene=3, seed=1)
    assert len(plan) == 3 * 384
    by_gene = {}
    for p in plan:
        by_gene.setdefault(p.gene_symbol, []).append(p)
    for gene in PLANTED:
        wells = by_gene[gene]
        assert len(wells) == 3 and len({w.plate for w in wells}) == 3  # one siRNA per plate
    for plate in {p.plate for p in plan}:
        roles = [p.gene_symbol for p in plan if p.plate == plate and p.role != "sample"]
        for control in ("OTP", "mock", "untransfected", "PLK1", "KIF11", "LIPA"):
            assert control in roles
    assert plan_screen(plates=3, seed=1) == plan  # deterministic


def test_simulate_screen_files_names_layout(tmp_path):
    sim = simulate_screen(tmp_path / "s", plates=1, fields=2, size=96, fmt="c01", seed=3, channels=2)
    found = discover([sim.images])
    assert found.pattern == "cx7" and found.frames.height == 384 * 2  # d1 frames exist but d0 is chosen
    assert set(found.channels) == {0, 1}
    name = found.frames["FileName_DNA"][0]
    assert name.startswith("SIMcx7_") and name.endswith("d0.C01")
    img = read_frame(sim.images / found.frames["Metadata_Plate"][0] / name)
    mask = tifffile.imread(sim.masks / found.frames["Metadata_Plate"][0] / name.replace(".C01", ".tif"))
    assert img.shape == mask.shape == (96, 96) and img.dtype == np.uint16
    layout = read_layout(sim.layout)
    assert layout.height == 384 and set(layout["role"]) >= {"sample", "negative", "positive", "other"}
    with open(sim.truth) as f:
        planted = [r for r in csv.DictReader(f) if r["planted"] == "1"]
    assert {r["gene_symbol"] for r in planted} == set(PLANTED)


def test_simulation_is_identical_across_worker_counts(tmp_path):
    a = simulate_screen(tmp_path / "a", plates=1, fields=1, size=64, seed=9, workers=1, masks=False)
    b = simulate_screen(tmp_path / "b", plates=1, fields=1, size=64, seed=9, workers=3, masks=False)
    for p in sorted(a.images.rglob("*.tif"))[::37]:
        np.testing.assert_array_equal(tifffile.imread(p), tifffile.imread(b.images / p.relative_to(a.images)))


def test_simulate_refuses_bad_options(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        simulate_screen(tmp_path / "full", plates=1)
    with pytest.raises(UserError, match="format"):
        simulate_screen(tmp_path / "n", fmt="jpg")
    with pytest.raises(UserError, match="plates"):
        simulate_screen(tmp_path / "m", plates=0)


def test_marker_channels_have_cells_holding_their_nuclei_and_puncta_in_their_cytoplasm():
    """synth_markers: every cell holds its whole nucleus, every punctum lies in its own cell's cytoplasm, more cells
    are punctum-positive with the LMP phenotype, and the Hoechst frame is the same whether the markers are drawn."""
    from nucleiscreen.simulate import MarkerSpec, synth_markers

    dna, nuclei = synth_frame(np.random.default_rng(2), (384, 384))
    cells = []
    dna2, nuclei2 = synth_frame(np.random.default_rng(2), (384, 384), cells=cells)
    np.testing.assert_array_equal(dna, dna2)
    np.testing.assert_array_equal(nuclei, nuclei2)
    assert len(cells) >= 5 and {c.nucleus for c in cells} <= set(np.unique(nuclei)) - {0}
    normal = synth_markers(np.random.default_rng(3), nuclei, cells)
    lmp = synth_markers(np.random.default_rng(3), nuclei, cells, MarkerSpec(puncta_positive=0.9))
    for drawn in (normal, lmp):
        assert drawn.lyso.dtype == drawn.cell.dtype == np.uint16 and drawn.cells.shape == nuclei.shape
        for c in cells:
            assert (drawn.cells[nuclei == c.nucleus] == c.nucleus).all()  # cell >= nucleus
        ys, xs = np.clip(np.rint(drawn.puncta[:, :2]).astype(int), 0, 383).T
        own = drawn.puncta[:, 2].astype(int)
        assert np.mean(drawn.cells[ys, xs] == own) > 0.97 and np.mean(nuclei[ys, xs] == 0) > 0.97
    per_cell = [np.bincount(d.puncta[:, 2].astype(int), minlength=nuclei.max() + 1)[[c.nucleus for c in cells]]
                for d in (normal, lmp)]
    assert np.mean(per_cell[1] >= 8) > 2 * np.mean(per_cell[0] >= 8)
    # the corners of a marker frame are dimmer than its centre where there is no cell (vignetting)
    assert normal.cell[normal.cells == 0].mean() > 0


def test_a_three_channel_screen_writes_markers_and_their_truth(tmp_path):
    import polars as pl

    sim = simulate_screen(tmp_path / "s", plates=1, fields=1, size=96, seed=3, channels=3)
    found = discover([sim.images])
    assert set(found.channels) == {0, 1, 2}
    truth = pl.read_csv(sim.truth)
    lyso = set(truth.filter(pl.col("planted_marker") == "lyso")["gene_symbol"])
    assert lyso == {"LIPA", "CTSD", "LAMP2"} and set(truth.filter(pl.col("planted_marker") == "cell")["gene_symbol"]) \
        == {"RAC1"}
    assert (sim.root / "puncta.parquet").exists()
    assert len(list(sim.masks.rglob("*_cells.tif"))) == 384
    with pytest.raises(UserError, match="channels"):
        simulate_screen(tmp_path / "four", plates=1, channels=4)
