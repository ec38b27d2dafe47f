"""A 4-plate screen planned by the simulator, measured as the engine would (image rows drawn from each well's
planted count and area multipliers), analyzed end to end: the planted hits and only those are called, every
plate has its Z′, frame QC drops bad frames without touching the dead wells."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from nucleiscreen.engine.screen.analyze import analyze
from nucleiscreen.simulate import PLANTED, plan_screen

PLATES = 4
FIELDS = 4
NUCLEI_PER_FIELD = 60.0  # a negative-control field
AREA = 1500.0  # px, median nucleus
FOCUS_PER_NUCLEUS = 2e-4  # the focus score grows with the nuclei in the frame (kernels/quality.py)


def image_table(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Image rows (one per field) and the plan they were drawn from.

    Per field: nuclei ~ Poisson(60 x count multiplier x plate effect), non-border ~ Binomial(nuclei, 0.85),
    nuclear areas ~ Gamma (CV 20 %) around 1,500 px x area multiplier, summed exactly per field.
    """
    rng = np.random.default_rng(seed)
    plan = pl.DataFrame([vars(p) for p in plan_screen(PLATES, wells_per_gene=3, seed=seed)])
    plate_effect = dict(zip(plan["plate"].unique().sort(), rng.lognormal(0, 0.06, PLATES), strict=True))
    fields = plan.join(pl.DataFrame({"site": range(FIELDS)}), how="cross")
    n_rows = fields.height
    expected = (NUCLEI_PER_FIELD * fields["count_multiplier"].to_numpy()
                * fields["plate"].replace_strict(plate_effect).to_numpy())
    nuclei = rng.poisson(expected)
    nonborder = rng.binomial(nuclei, 0.85)
    shape = 25.0  # CV 1 / sqrt(25) = 20 % per nucleus; a sum of k gammas is a gamma of shape k * 25
    mean_area = AREA * fields["area_multiplier"].to_numpy()
    total_area = np.where(nonborder > 0, rng.gamma(np.maximum(nonborder, 1) * shape, mean_area / shape), 0.0)
    focus = FOCUS_PER_NUCLEUS * nuclei * rng.lognormal(0, 0.1, n_rows) + 5e-6
    images = fields.select(
        ImageNumber=pl.int_range(1, pl.len() + 1),
        Metadata_Plate="plate", Metadata_Well="well",
        Metadata_Row=pl.col("well").str.slice(0, 1), Metadata_Column=pl.col("well").str.slice(1).cast(pl.Int64),
        Metadata_Site="site", Metadata_Channel=pl.lit(0),
        PathName_DNA=pl.lit("/nowhere/") + pl.col("plate"),
        FileName_DNA=pl.format("{}_{}f{}d0.C01", "plate", "well", pl.col("site").cast(pl.String).str.zfill(2)),
    ).with_columns(
        ImageQuality_FocusScore_DNA=pl.Series(focus),
        ImageQuality_PercentMaximal_DNA=pl.lit(4e-4),
        Count_Nuclei=pl.Series(nuclei, dtype=pl.Int64),
        Count_Micronuclei=pl.Series(rng.poisson(3, n_rows), dtype=pl.Int64),
        Count_Nuclei_NonBorder=pl.Series(nonborder, dtype=pl.Int64),
        Total_Nuclei_AreaShape_Area=pl.Series(total_area),
    ).with_columns(
        Mean_Nuclei_AreaShape_Area=pl.when(pl.col("Count_Nuclei_NonBorder") > 0)
        .then(pl.col("Total_Nuclei_AreaShape_Area") / pl.col("Count_Nuclei_NonBorder")),
    ).with_columns(
        Median_Nuclei_AreaShape_Area=pl.col("Mean_Nuclei_AreaShape_Area") * 0.98,
        Mean_Nuclei_Intensity_MeanIntensity_DNA=pl.when(pl.col("Count_Nuclei_NonBorder") > 0).then(1500.0),
    )
    return images, plan


BLURRED = ("SIMcx7_261124000002", 2)  # (plate, site) of the first neutral well's field that lost focus
SATURATED = ("SIMcx7_261124000003", 1)


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> tuple:
    images, plan = image_table()
    neutral = plan.filter((pl.col("role") == "sample") & ~pl.col("gene_symbol").is_in(list(PLANTED)))
    bad_wells = {}
    for (plate, site), what in ((BLURRED, "blurred"), (SATURATED, "saturated")):
        well = neutral.filter(pl.col("plate") == plate)["well"][0]
        bad_wells[what] = (plate, well)
        here = (pl.col("Metadata_Plate") == plate) & (pl.col("Metadata_Well") == well) & (
            pl.col("Metadata_Site") == site)
        if what == "blurred":  # blur: a tenth of the sharpness, most nuclei not found
            change = {"ImageQuality_FocusScore_DNA": pl.col("ImageQuality_FocusScore_DNA") * 0.1,
                      "Count_Nuclei": pl.col("Count_Nuclei") // 5}
        else:  # an overexposed frame: a third of its pixels at the maximum, nothing segmented
            change = {"ImageQuality_PercentMaximal_DNA": pl.lit(33.0), "Count_Nuclei": pl.lit(0, pl.Int64)}
        images = images.with_columns(**{k: pl.when(here).then(v).otherwise(pl.col(k)) for k, v in change.items()})
    root = tmp_path_factory.mktemp("screen")
    run = root / "run"
    for i, ((plate,), part) in enumerate(sorted(images.partition_by("Metadata_Plate", as_dict=True).items())):
        (run / "images" / f"plate={plate}").mkdir(parents=True)
        if i == 0:  # written by an engine that did not measure quality yet: the parts' columns differ
            part = part.drop("^ImageQuality_.*$")
        part.write_parquet(run / "images" / f"plate={plate}" / "part-00000.parquet")
    layout = root / "layout.csv"
    plan.select(
        "plate", "well", "gene_symbol", "role", "sirna_id",
        control_name=pl.when(pl.col("role").is_in(["negative", "positive", "other"])).then("gene_symbol"),
    ).write_csv(layout)
    return analyze(run, layout), plan, bad_wells


def test_planted_hits_and_only_those(screen):
    result, plan, _ = screen
    hits = dict(zip(result.hits["gene_symbol"], result.hits["hit_rules"], strict=True))
    assert set(hits) == set(PLANTED)
    assert hits["FBXO5"] == hits["CCNA2"] == "reduced_count_enlarged_nuclei"
    assert "strong_loss" in hits["UBB"] and "strong_loss" in hits["POLR2A"]
    genes = result.genes
    assert genes.height == plan.filter(pl.col("role") == "sample")["gene_symbol"].n_unique()
    planted = genes.filter(pl.col("gene_symbol").is_in(list(PLANTED)))
    neutral = genes.filter(~pl.col("gene_symbol").is_in(list(PLANTED)))
    # the robust scores separate them too: every planted gene is far below every neutral one
    for score in ("count_ssmd", "count_robust_z", "count_b_score"):
        assert planted[score].max() < neutral[score].min(), score
    assert (planted["count_ssmd"] < -3).all()
    # controls are reported, never hits; the positive ones lose most nuclei
    controls = {r["control_name"]: r for r in result.controls.iter_rows(named=True)}
    assert controls["PLK1"]["count_fc"] < 0.2 and controls["KIF11"]["count_fc"] < 0.2
    assert controls["OTP"]["reference"] and 0.9 < controls["mock"]["count_fc"] < 1.1


def test_every_plate_has_its_z_prime(screen):
    result, plan, _ = screen
    plates = result.plates
    assert plates["plate"].to_list() == plan["plate"].unique().sort().to_list() and plates.height == PLATES
    assert plates["z_prime"].null_count() == 0 and plates["z_prime_robust"].null_count() == 0
    assert (plates["z_prime"] > 0.5).all() and (plates["z_prime_robust"] > 0.3).all()  # 0.63-0.78, 0.52-0.85
    assert plates["low_z_prime"].to_list() == (plates["z_prime_robust"] < 0.5).to_list()
    assert plates["mock_count_fc"].is_between(0.9, 1.1).all()
    assert plates["untransfected_count_fc"].is_between(0.95, 1.2).all()  # planted 1.08
    page = (result.out_dir / "report.html").read_text()
    for plate in plates["plate"]:
        assert f"{plate}: robust Z′" in page and f"{plate}: Z′" in page  # a point of each kind per plate


def test_frame_qc_drops_bad_frames_and_keeps_dead_wells(screen):
    result, _, bad_wells = screen
    wells = result.wells
    excluded = wells.filter(pl.col("fields_excluded") > 0).select("plate", "well").rows()
    assert sorted(excluded) == sorted(bad_wells.values())
    for plate, well in bad_wells.values():
        w = wells.filter((pl.col("plate") == plate) & (pl.col("well") == well)).row(0, named=True)
        assert (w["fields_analysed"], w["fields_excluded"]) == (FIELDS - 1, 1)
        assert 0.75 < w["count_fc"] < 1.33  # without the exclusion: about 0.8 (blurred) and 0.75 (saturated)
    # wells where the cells died have almost no focus, and keep every field
    dead = wells.filter(pl.col("gene_symbol").is_in(["UBB", "POLR2A"]))
    assert (dead["fields_analysed"] == FIELDS).all() and dead["count_fc"].max() < 0.1
    assert result.plates["fields_excluded"].sum() == 2
