"""Well aggregation, per-plate normalization, plate QC, genes and hit rules against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from nucleiscreen.engine.screen.genes import aggregate_genes
from nucleiscreen.engine.screen.hits import call_hits, control_summary
from nucleiscreen.engine.screen.layout import LAYOUT_COLUMNS, well_parts
from nucleiscreen.engine.screen.plates import MAD_SCALE, median_polish, normalize_plates
from nucleiscreen.engine.screen.qc import FrameQC, plate_qc, positive_z_primes
from nucleiscreen.engine.screen.report.text import format_table
from nucleiscreen.engine.screen.rules import DEFAULT_RULES, Condition, HitRule
from nucleiscreen.engine.screen.wells import WELL_COLUMNS, aggregate_wells
from nucleiscreen.errors import UserError


def frame(plate: str, well: str, site: int, nuclei: int, area: float = 400.0, nonborder: int | None = None,
          micronuclei: int = 0, intensity: float = 1000.0) -> dict:
    """One image-table row whose non-border nuclei all have area ``area`` and intensity ``intensity``."""
    nonborder = nuclei if nonborder is None else nonborder
    row, column = well[0], int(well[1:])
    return {
        "ImageNumber": site, "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Row": row,
        "Metadata_Column": column, "Metadata_Site": site, "Metadata_Channel": 0,
        "PathName_DNA": f"/d/{plate}", "FileName_DNA": f"{plate}_{well}f{site:02d}d0.tif",
        "Count_Nuclei": nuclei, "Count_Micronuclei": micronuclei,
        "Count_Nuclei_NonBorder": nonborder, "Total_Nuclei_AreaShape_Area": float(area * nonborder),
        "Mean_Nuclei_AreaShape_Area": area if nonborder else None,
        "Median_Nuclei_AreaShape_Area": area if nonborder else None,
        "Mean_Nuclei_Intensity_MeanIntensity_DNA": intensity if nonborder else None,
    }


def images(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"Mean_Nuclei_AreaShape_Area": pl.Float64,
                                                "Median_Nuclei_AreaShape_Area": pl.Float64,
                                                "Mean_Nuclei_Intensity_MeanIntensity_DNA": pl.Float64})


def layout(rows: list[tuple[str, str, str | None, str]]) -> pl.DataFrame:
    """A read_layout-shaped table from (plate, well, gene, role); controls are named by their gene."""
    df = pl.DataFrame(rows, schema=["plate", "well", "gene_symbol", "role"], orient="row")
    row, column = well_parts(pl.col("well"))
    return df.with_columns(
        row=row, column=column, sirna_id=pl.lit(None, pl.String), entrez_id=pl.lit(None, pl.String),
        control_name=pl.when(pl.col("role") != "sample").then(pl.col("gene_symbol")),
    ).select(LAYOUT_COLUMNS)


def wells_from_counts(plate: str, counts: dict[str, float], areas: dict[str, float] | None = None
                      ) -> list[dict]:
    """One field per well with ``counts[well]`` nuclei (and area ``areas[well]``)."""
    areas = areas or {}
    return [frame(plate, w, 1, int(n), area=areas.get(w, 400.0)) for w, n in counts.items()]


# --- aggregate_wells ---------------------------------------------------------------------------------------


def test_aggregate_counts_and_per_field():
    rows = [frame("P1", "B07", 1, 100, micronuclei=3), frame("P1", "B07", 2, 50, nonborder=40, micronuclei=1),
            frame("P1", "C01", 1, 0)]
    wells = aggregate_wells(images(rows))
    assert wells.columns == list(WELL_COLUMNS)
    b07, c01 = wells.row(0, named=True), wells.row(1, named=True)
    assert (b07["plate"], b07["well"], b07["row"], b07["column"]) == ("P1", "B07", "B", 7)
    assert (b07["fields_analysed"], b07["fields_failed"]) == (2, 0)
    assert (b07["nuclei"], b07["nuclei_nonborder"]) == (150, 140)
    assert b07["micronuclei"] == 4
    assert b07["nuclei_per_field"] == 75.0
    assert b07["micronuclei_per_nucleus"] == pytest.approx(4 / 150)
    # zero nuclei: a count of 0, no area, no intensity (null, not NaN)
    assert (c01["nuclei"], c01["nuclei_per_field"]) == (0, 0.0)
    assert c01["nuclei_area_mean"] is None and c01["nuclei_intensity_mean"] is None
    assert c01["micronuclei_per_nucleus"] is None


def test_object_weighted_means_equal_per_object_computation():
    """Frames summarized as CellProfiler-style per-image rows give exactly the per-object well mean."""
    rng = np.random.default_rng(7)
    rows, areas, intensities, medians = [], [], [], []
    for site in range(1, 9):
        n = int(rng.integers(0, 40)) if site != 3 else 4
        area = rng.integers(100, 3000, n).astype(float)
        mean_intensity = rng.uniform(200, 5000, n)
        # field 3: every nucleus touches the border
        border = rng.random(n) < 0.2 if site != 3 else np.ones(n, bool)
        keep = ~border
        areas.append(area[keep])
        intensities.append(mean_intensity[keep])
        nb = int(keep.sum())
        if nb:
            medians.append(float(np.median(area[keep])))
        rows.append({**frame("P1", "D04", site, n, nonborder=nb),
                     "Total_Nuclei_AreaShape_Area": float(area[keep].sum()),
                     "Mean_Nuclei_AreaShape_Area": float(area[keep].mean()) if nb else None,
                     "Median_Nuclei_AreaShape_Area": float(np.median(area[keep])) if nb else None,
                     "Mean_Nuclei_Intensity_MeanIntensity_DNA":
                         float(mean_intensity[keep].mean()) if nb else None})
    well = aggregate_wells(images(rows).lazy()).row(0, named=True)
    all_areas, all_intensities = np.concatenate(areas), np.concatenate(intensities)
    assert well["nuclei_nonborder"] == all_areas.size
    assert well["nuclei_area_mean"] == pytest.approx(all_areas.mean(), rel=1e-12)
    assert well["nuclei_intensity_mean"] == pytest.approx(all_intensities.mean(), rel=1e-12)
    # the mean of frame means is not the same number (that is the point of the totals)
    frame_means = [a.mean() for a in areas if a.size]
    assert not math.isclose(float(np.mean(frame_means)), well["nuclei_area_mean"], rel_tol=1e-6)
    assert well["nuclei_area_median_fields"] == pytest.approx(float(np.median(medians)))


def test_failed_fields_are_not_zero_nuclei():
    rows = [frame("P1", "A01", s, 100) for s in (1, 2)] + [frame("P1", "A02", 1, 90)]
    errors = pl.DataFrame({
        "PathName_DNA": ["/d/P1"] * 5,
        "FileName_DNA": ["P1_A01f03d0.tif", "P1_A01f04d0.tif", "P1_A01f04d0.tif", "P1_A02f01d0.tif", "x.tif"],
        "Stage": ["decode", "decode", "infer", "decode", "decode"],
        "Error": ["bad"] * 5,
        "Metadata_Plate": ["P1", "P1", "P1", "P1", None],
        "Metadata_Well": ["A01", "A01", "A01", "A02", None],
        "Metadata_Site": [3, 4, 4, 1, None],
    })
    errors = pl.concat([errors, pl.DataFrame({"PathName_DNA": ["/d/P1"], "FileName_DNA": ["P1_A03f01d0.tif"],
                                              "Stage": ["decode"], "Error": ["bad"], "Metadata_Plate": ["P1"],
                                              "Metadata_Well": ["A03"], "Metadata_Site": [1]})])
    wells = aggregate_wells(images(rows), errors).sort("well")
    a01, a02, a03 = wells.iter_rows(named=True)
    # two failed fields (one file failing twice counts once), 200 nuclei over the 2 fields analysed
    assert (a01["fields_analysed"], a01["fields_failed"], a01["nuclei_per_field"]) == (2, 2, 100.0)
    # A02's file failed once and then succeeded: not a failed field
    assert (a02["fields_analysed"], a02["fields_failed"], a02["nuclei_per_field"]) == (1, 0, 90.0)
    # every frame of A03 failed: the well is there, without a count (unknown, not zero)
    assert (a03["fields_analysed"], a03["fields_failed"]) == (0, 1)
    assert a03["nuclei"] is None and a03["nuclei_per_field"] is None and a03["nuclei_area_mean"] is None
    assert (a03["row"], a03["column"]) == ("A", 3)


def test_errors_without_metadata_columns_and_exclusion():
    rows = [frame("P1", "A01", 1, 100), frame("P1", "A01", 2, 10), frame("P1", "A01", 3, 80)]
    errors = pl.DataFrame({"PathName_DNA": ["/d"], "FileName_DNA": ["y.tif"], "Stage": ["discover"],
                           "Error": ["e"]})
    well = aggregate_wells(images(rows), errors, exclude=pl.col("Count_Nuclei") < 20).row(0, named=True)
    assert (well["fields_analysed"], well["fields_excluded"], well["fields_failed"]) == (2, 1, 0)
    assert (well["nuclei"], well["nuclei_per_field"]) == (180, 90.0)


def test_exact_median_area_from_objects():
    rows = [frame("P1", "A01", 1, 3, nonborder=2), frame("P1", "A01", 2, 2), frame("P1", "A01", 3, 1),
            frame("P1", "A02", 1, 1, nonborder=0), frame("P1", "A03", 1, 0)]
    objects = pl.DataFrame({
        "Metadata_Plate": ["P1"] * 9,
        "Metadata_Well": ["A01"] * 7 + ["A02"] * 2,
        "Metadata_Site": [1, 1, 1, 1, 2, 2, 3, 1, 1],
        "AreaShape_Area": [400, 1000, 900, 40, 300, 700, 5000, 800, 30],
        "TouchesBorder": [False, False, True, False, False, False, False, True, False],
    })
    wells = aggregate_wells(images(rows), objects=objects).sort("well")
    a01, a02, a03 = wells.iter_rows(named=True)
    # A01's nuclei: 400, 1000 (900 touches the border, 40 is a micronucleus), 300, 700, 5000 -> median 700
    assert a01["nuclei_area_median"] == 700.0
    # without frame 3 (excluded): 300, 400, 700, 1000 -> an even count, (400 + 700) / 2
    excluded = aggregate_wells(images(rows), objects=objects, exclude=pl.col("Metadata_Site") == 3).sort("well")
    assert excluded["nuclei_area_median"][0] == 550.0
    # a higher micronucleus cut-off drops 300 and 400: 700, 1000, 5000
    assert aggregate_wells(images(rows), objects=objects, micronucleus_area=500)["nuclei_area_median"][0] == 1000
    # A02: only a border-touching nucleus and a micronucleus; A03: no object at all -> null, never NaN
    assert a02["nuclei_area_median"] is None and a03["nuclei_area_median"] is None
    # without an object table the column is there, null
    assert aggregate_wells(images(rows))["nuclei_area_median"].null_count() == 3
    with pytest.raises(UserError, match="object table has no column TouchesBorder"):
        aggregate_wells(images(rows), objects=objects.drop("TouchesBorder"))


def test_frame_qc_rules():
    focus = "ImageQuality_FocusScore_DNA"
    saturated = "ImageQuality_PercentMaximal_DNA"
    rows = [  # (well, site, nuclei, focus, percent maximal)
        ("A01", 1, 20, 1.0, 0.001), ("A01", 2, 20, 0.9, 0.001), ("A01", 3, 2, 0.15, 0.001),
        ("A01", 4, 20, 1.1, 0.001),
        ("A02", 1, 0, 1e-5, 0.001), ("A02", 2, 1, 0.01, 0.001), ("A02", 3, 0, 1e-5, 0.001),  # cells died
        ("A03", 1, 30, 1.0, 30.0), ("A03", 2, 30, None, 0.001), ("A03", 3, 30, 1.0, None),
    ]
    table = images([{**frame("P1", w, site, n), focus: f, saturated: m} for w, site, n, f, m in rows])
    qc = FrameQC()
    flags = table.select(x=qc.exclude(table.columns))["x"].to_list()
    # A01: median focus (0.9 + 1.0) / 2 = 0.95, 0.15 < 0.2 * 0.95; A02's frames are never judged for focus
    # (median 0 nuclei per frame < 20); A03: 30 % of the pixels at the maximum; null measures exclude nothing
    assert flags == [False, False, True, False, False, False, False, True, False, False]
    wells = aggregate_wells(table, exclude=qc.exclude(table.columns)).sort("well")
    assert wells["fields_excluded"].to_list() == [1, 0, 1]
    assert wells["nuclei_per_field"].to_list() == [20.0, 1 / 3, 30.0]
    # an absolute floor catches a well out of focus everywhere; rules can be switched off
    floor = FrameQC(min_focus=0.5, min_focus_ratio=None, max_saturated_percent=None)
    assert table.select(x=floor.exclude(table.columns))["x"].to_list() == [False, False, True, False, True, True, True,
                                                                        False, False, False]
    assert FrameQC().exclude(["Count_Nuclei", "Metadata_Plate"]) is None
    assert FrameQC(min_focus_ratio=None, max_saturated_percent=None).exclude(table.columns) is None
    assert len(qc.describe(table.columns)) == 2 and qc.describe(["Count_Nuclei"]) == []


def test_missing_image_columns():
    with pytest.raises(UserError, match="no column Count_Nuclei_NonBorder"):
        aggregate_wells(pl.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "Count_Nuclei": [1],
                                      "Total_Nuclei_AreaShape_Area": [1.0]}))


# --- normalize_plates --------------------------------------------------------------------------------------

CONTROLS = [("*", "A01", "OTP", "negative"), ("*", "A02", "OTP", "negative"), ("*", "A03", "OTP", "negative"),
            ("*", "A04", "OTP", "negative"), ("*", "A05", "mock", "negative"),
            ("*", "A06", "PLK1", "positive"), ("*", "A07", "KIF11", "positive")]


def plate_one() -> tuple[pl.DataFrame, pl.DataFrame]:
    counts = {"A01": 10, "A02": 20, "A03": 30, "A04": 50, "A05": 5, "A06": 2, "A07": 4,
              "B01": 25, "B02": 50, "B03": 0, "B04": 75, "B05": 100}
    areas = {"A01": 300, "A02": 400, "A03": 600, "A04": 500, "B02": 900}
    samples = {"B01": "G1", "B02": "G1", "B03": "G2", "B04": "G2", "B05": "G3"}
    lay = layout([*CONTROLS, *(("P1", well, gene, "sample") for well, gene in samples.items())])
    return aggregate_wells(images(wells_from_counts("P1", counts, areas))), lay


def test_fold_change_to_even_number_of_reference_wells():
    wells, lay = plate_one()
    norm = normalize_plates(wells, lay)
    by_well = {r["well"]: r for r in norm.iter_rows(named=True)}
    # OTP wells: 10, 20, 30, 50 nuclei -> median (20 + 30) / 2 = 25; areas 300, 400, 600, 500 -> 450
    assert [w for w, r in by_well.items() if r["is_reference"]] == ["A01", "A02", "A03", "A04"]
    assert by_well["B01"]["count_fc"] == 1.0
    assert by_well["B02"]["count_fc"] == 2.0
    assert by_well["B02"]["area_fc"] == 2.0
    assert by_well["B02"]["log2_count_fc"] == 1.0
    assert by_well["A05"]["count_fc"] == 0.2  # mock: reported beside, not a reference
    assert by_well["B01"]["area_fc"] == pytest.approx(400 / 450)
    # zero nuclei: count FC 0, area FC and both logs null (never NaN or -inf)
    b03 = by_well["B03"]
    assert (b03["count_fc"], b03["area_fc"]) == (0.0, None)
    assert (b03["log2_count_fc"], b03["log2_area_fc"]) == (None, None)
    assert norm["count_fc"].is_nan().sum() == 0 and norm["area_fc"].is_nan().sum() == 0


def test_robust_z_by_hand_and_mad_zero_guard():
    wells, lay = plate_one()
    norm = normalize_plates(wells, lay)
    # samples 25, 50, 0, 75, 100: median 50; |x - 50| = 25, 0, 50, 25, 50 -> MAD 25
    z = dict(zip(norm["well"], norm["count_robust_z"], strict=True))
    assert z["B05"] == pytest.approx(50 / (MAD_SCALE * 25))
    assert z["B03"] == pytest.approx(-50 / (MAD_SCALE * 25))
    assert z["B02"] == 0.0
    # all samples equal: MAD = 0 -> z is null, not inf
    flat = aggregate_wells(images(wells_from_counts("P1", {"A01": 10, "B01": 30, "B02": 30, "B03": 30})))
    norm = normalize_plates(flat, lay)
    assert norm["count_robust_z"].null_count() == norm.height
    assert norm.filter(pl.col("well") == "B01")["count_fc"].item() == 3.0


def test_ssmd_by_hand_and_mad_zero_guard():
    wells, lay = plate_one()
    by_well = {r["well"]: r for r in normalize_plates(wells, lay).iter_rows(named=True)}
    # reference counts 10, 20, 30, 50 (median 25): l = log2 of 0.4, 0.8, 1.2, 2
    l_ref = sorted(math.log2(x) for x in (0.4, 0.8, 1.2, 2.0))
    centre = (l_ref[1] + l_ref[2]) / 2  # an even count: the mean of the middle two
    deviations = sorted(abs(v - centre) for v in l_ref)
    mad = (deviations[1] + deviations[2]) / 2
    scale = math.sqrt(2) * MAD_SCALE * mad
    assert by_well["B02"]["count_ssmd"] == pytest.approx((math.log2(2.0) - centre) / scale)
    assert by_well["A06"]["count_ssmd"] == pytest.approx((math.log2(2 / 25) - centre) / scale)  # PLK1
    # no nucleus in 1 field: half a nucleus, l = log2(0.5 / 25); the strongest loss keeps a score
    assert by_well["B03"]["count_ssmd"] == pytest.approx((math.log2(0.5 / 25) - centre) / scale)
    # area: reference areas 300, 400, 600, 500 (median 450)
    a_ref = sorted(math.log2(a / 450) for a in (300, 400, 600, 500))
    a_centre = (a_ref[1] + a_ref[2]) / 2
    a_dev = sorted(abs(v - a_centre) for v in a_ref)
    a_scale = math.sqrt(2) * MAD_SCALE * (a_dev[1] + a_dev[2]) / 2
    assert by_well["B02"]["area_ssmd"] == pytest.approx((math.log2(900 / 450) - a_centre) / a_scale)
    assert by_well["B03"]["area_ssmd"] is None  # no nucleus, no area
    # identical reference wells: MAD = 0 -> null, not inf
    flat = aggregate_wells(images(wells_from_counts("P1", {"A01": 10, "A02": 10, "A03": 10, "B01": 30})))
    assert normalize_plates(flat, lay)["count_ssmd"].null_count() == 4  # every well


def r_medpolish(x: np.ndarray, max_iter: int = 10, eps: float = 0.01) -> np.ndarray:
    """R's stats::medpolish(x, na.rm = TRUE), line by line; returns the residuals."""
    z = x.astype(float).copy()
    nr, nc = z.shape
    t, r, c, oldsum = 0.0, np.zeros(nr), np.zeros(nc), 0.0
    for _ in range(max_iter):
        rdelta = np.nanmedian(z, axis=1)
        z = z - rdelta[:, None]
        r = r + rdelta
        delta = np.nanmedian(c)
        c, t = c - delta, t + delta
        cdelta = np.nanmedian(z, axis=0)
        z = z - cdelta[None, :]
        c = c + cdelta
        delta = np.nanmedian(r)
        r, t = r - delta, t + delta
        newsum = np.nansum(np.abs(z))
        if newsum == 0 or abs(newsum - oldsum) < eps * newsum:
            break
        oldsum = newsum
    return z


def polish_table(matrices: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.DataFrame([
        {"plate": plate, "row": "ABCDEFGHIJKLMNOP"[i], "column": j + 1,
         "value": None if np.isnan(m[i, j]) else float(m[i, j])}
        for plate, m in matrices.items() for i in range(m.shape[0]) for j in range(m.shape[1])
    ], schema={"plate": pl.String, "row": pl.String, "column": pl.Int64, "value": pl.Float64})


def test_median_polish_by_hand_and_against_r():
    # row medians 2, 5, 8 -> [[-1, 0, 1], [-1, 0, 1], [-1, 0, 92]]; column medians -1, 0, 1 -> all 0 but
    # the outlier, 91; the second sweep changes nothing and stops the polish
    out = median_polish(polish_table({"P": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 100.0]])}))
    assert out["residual"].to_list() == [0, 0, 0, 0, 0, 0, 0, 0, 91]
    # two plates polished independently, with missing wells, against R's algorithm
    rng = np.random.default_rng(3)
    matrices = {}
    for plate in ("P1", "P2"):
        m = rng.normal(0, 1, (16, 24)) + np.linspace(0, 2, 24)[None, :] + rng.normal(0, 1, (16, 1))
        m[rng.random(m.shape) < 0.05] = np.nan
        matrices[plate] = m
    got = median_polish(polish_table(matrices))
    for plate, m in matrices.items():
        residual = got.filter(pl.col("plate") == plate)["residual"].to_numpy().reshape(16, 24)
        np.testing.assert_allclose(residual, r_medpolish(m), rtol=1e-12, atol=1e-12)
        assert np.isnan(residual[np.isnan(m)]).all()


def test_b_score_by_hand():
    # four sample wells with reference 8 nuclei per field: l = log2(count / 8) = [[0, 1], [2, 5]]
    # row medians 0.5, 3.5 -> [[-.5, .5], [-1.5, 1.5]]; column medians -1, 1 -> [[.5, -.5], [-.5, .5]]
    # residual median 0, MAD 0.5 -> B = +-0.5 / (1.4826 * 0.5)
    counts = {"A01": 8, "A02": 8, "A03": 8, "A04": 8, "A06": 1, "A07": 1,
              "B01": 8, "B02": 16, "C01": 32, "C02": 256}
    samples = [("P1", "B01", "G1", "sample"), ("P1", "B02", "G2", "sample"), ("P1", "C01", "G3", "sample"),
               ("P1", "C02", "G4", "sample")]
    norm = normalize_plates(aggregate_wells(images(wells_from_counts("P1", counts))), layout([*CONTROLS, *samples]))
    b = dict(zip(norm["well"], norm["count_b_score"], strict=True))
    one = 1 / MAD_SCALE
    assert [b["B01"], b["B02"], b["C01"], b["C02"]] == pytest.approx([one, -one, -one, one])
    assert b["A01"] is None and b["A06"] is None  # controls have no B-score
    genes = aggregate_genes(norm)
    assert genes["count_b_score"].to_list() == pytest.approx([one, -one, -one, one])


def test_reference_choices():
    wells, lay = plate_one()
    mock = normalize_plates(wells, lay, reference=["Mock"])
    assert mock.filter(pl.col("is_reference"))["well"].to_list() == ["A05"]
    assert mock.filter(pl.col("well") == "B01")["count_fc"].item() == 5.0
    both = normalize_plates(wells, lay, reference=["otp", "MOCK"])
    assert both["is_reference"].sum() == 5  # 5, 10, 20, 30, 50 -> median 20
    assert both.filter(pl.col("well") == "B02")["count_fc"].item() == 2.5
    with pytest.raises(UserError, match="no well named scrambled.*control names are: KIF11, OTP, PLK1, mock"):
        normalize_plates(wells, lay, reference="scrambled")
    # no OTP named: the other negative wells are the reference, mock stays beside it (10, 20, 30, 50 -> 25)
    no_otp = lay.with_columns(pl.col("gene_symbol", "control_name").replace("OTP", "siNeg"))
    renamed = normalize_plates(wells, no_otp)
    assert renamed.filter(pl.col("is_reference"))["well"].to_list() == ["A01", "A02", "A03", "A04"]
    assert renamed.filter(pl.col("well") == "B02")["count_fc"].item() == 2.0
    # only mock and untransfected wells: every negative well is the reference
    only_mock = lay.filter(pl.col("gene_symbol") != "OTP")
    assert normalize_plates(wells, only_mock)["is_reference"].sum() == 1


def test_plate_without_usable_reference_is_flagged_not_fatal():
    """One lost plate gets null fold changes and no_reference; only a screen with no usable plate stops."""
    lay = layout([*CONTROLS, ("P1", "B01", "G1", "sample"), ("P2", "B01", "G1", "sample")])
    dead = {"A01": 0, "A02": 0, "A03": 0, "A04": 5, "B01": 30}
    fine = {"A01": 10, "A02": 10, "B01": 30}
    wells = aggregate_wells(images(wells_from_counts("P1", fine) + wells_from_counts("P2", dead)))
    out = normalize_plates(wells, lay)
    assert out.filter(pl.col("plate") == "P1", pl.col("well") == "B01")["count_fc"].item() == 3.0
    p2 = out.filter(pl.col("plate") == "P2")
    assert p2["count_fc"].null_count() == p2.height and p2["count_ssmd"].null_count() == p2.height
    qc = plate_qc(out)
    assert qc["no_reference"].to_list() == [False, True]
    with pytest.raises(UserError, match=r"P2: its 4 reference \(OTP/negative\) wells have a median of 0"):
        normalize_plates(wells.filter(pl.col("plate") == "P2"), lay)
    errors = pl.DataFrame({"PathName_DNA": ["/d"], "FileName_DNA": ["f.tif"], "Metadata_Plate": ["P2"],
                           "Metadata_Well": ["A01"]})
    failed = aggregate_wells(images(wells_from_counts("P2", {"B01": 30})), errors)
    with pytest.raises(UserError, match=r"plate P2: its 1 reference .* have no analysed field"):
        normalize_plates(failed, lay)
    no_controls = layout([("P1", "B01", "G1", "sample"), ("P1", "A01", "mock", "negative")])
    with pytest.raises(UserError, match="plate P1: no well of the run is a reference \\(mock\\)"):
        normalize_plates(aggregate_wells(images(wells_from_counts("P1", {"B01": 3}))), no_controls,
                         reference=["mock"])


# --- genes, plates, hits -----------------------------------------------------------------------------------


def test_aggregate_genes_medians():
    wells, lay = plate_one()
    genes = aggregate_genes(normalize_plates(wells, lay))
    g = {r["gene_symbol"]: r for r in genes.iter_rows(named=True)}
    assert list(g) == ["G1", "G2", "G3"]
    assert (g["G1"]["wells"], g["G1"]["count_fc"]) == (2, 1.5)  # FC 1 and 2: even count
    # G2: FC 0 (no nuclei) and 3; the area median uses only the well with an area
    assert g["G2"]["count_fc"] == 1.5
    assert g["G2"]["area_fc"] == pytest.approx(400 / 450)
    assert g["G2"]["wells_pass_strong_loss"] == 1
    assert g["G3"]["log2_count_fc"] == 2.0


def test_plate_qc_z_prime_by_hand():
    counts = {"A01": 10, "A02": 20, "A03": 30, "A04": 40, "A06": 2, "A07": 4, "B01": 25}
    lay = layout([*CONTROLS, ("P1", "B01", "G1", "sample")])
    one = aggregate_wells(images(wells_from_counts("P1", counts)))
    two = aggregate_wells(images(wells_from_counts("P2", {"A01": 10, "A02": 10, "A06": 1})))
    lay = pl.concat([lay, layout([("P2", "B01", "G1", "sample")])])
    qc = plate_qc(normalize_plates(pl.concat([one, two]), lay)).row(0, named=True)
    # reference 10, 20, 30, 40: mean 25, sd 12.9099, median 25, MAD 10
    # positive 2, 4: mean 3, sd 1.41421, median 3, MAD 1
    sd_n, sd_p = np.std([10, 20, 30, 40], ddof=1), np.std([2, 4], ddof=1)
    assert qc["z_prime"] == pytest.approx(1 - 3 * (sd_p + sd_n) / 22)
    assert qc["z_prime_robust"] == pytest.approx(1 - 3 * MAD_SCALE * (1 + 10) / 22)
    assert qc["reference_nuclei_per_field"] == 25.0
    assert qc["reference_cv"] == pytest.approx(sd_n / 25)
    assert qc["positive_count_fc"] == pytest.approx(3 / 25)
    assert (qc["reference_wells"], qc["positive_wells"]) == (4, 2)
    # plate 2 has one positive well: Z′ undefined
    qc2 = plate_qc(normalize_plates(pl.concat([one, two]), lay)).row(1, named=True)
    assert qc2["z_prime"] is None and qc2["z_prime_robust"] is None
    assert qc2["reference_cv"] == 0.0
    # robust Z′ = 1 - 3 * 1.4826 * 11 / 22 = -1.2239: under 0.5, not under -2; undefined: null
    assert qc["z_prime_robust"] == pytest.approx(-1.2239, abs=1e-4)
    flags = plate_qc(normalize_plates(pl.concat([one, two]), lay))["low_z_prime"].to_list()
    assert flags == [True, None]
    assert plate_qc(normalize_plates(pl.concat([one, two]), lay), z_prime_min=-2)["low_z_prime"][0] is False


def test_plate_qc_range_cv_and_transfection_toxicity():
    wells, lay = plate_one()  # OTP 10, 20, 30, 50; mock 5; PLK1 2, KIF11 4
    extra = aggregate_wells(images(wells_from_counts("P1", {"A08": 30, "A09": 20, "A10": 40})))
    lay = pl.concat([lay, layout([("*", "A08", "untransfected", "negative"), ("*", "A09", "Mock 2", "negative"),
                                  ("*", "A10", "untreated", "negative")])])
    qc = plate_qc(normalize_plates(pl.concat([wells, extra]), lay)).row(0, named=True)
    assert qc["dynamic_range"] == 25 / 3  # reference median 25 over the positive median (2 + 4) / 2
    assert qc["positive_cv"] == pytest.approx(np.std([2, 4], ddof=1) / 3)
    assert qc["mock_count_fc"] == pytest.approx((5 / 25 + 20 / 25) / 2)  # mock and "Mock 2"
    assert qc["untransfected_count_fc"] == pytest.approx((30 / 25 + 40 / 25) / 2)  # untransfected, untreated
    none = plate_qc(normalize_plates(*plate_one())).row(0, named=True)
    assert none["untransfected_count_fc"] is None
    # a positive median of 0: no finite dynamic range
    dead = aggregate_wells(images(wells_from_counts("P1", {"A01": 10, "A02": 20, "A06": 0, "A07": 0, "B01": 5})))
    assert plate_qc(normalize_plates(dead, lay))["dynamic_range"][0] is None


def test_rules_null_never_pass_and_parse():
    df = pl.DataFrame({"count_fc": [0.4, 0.4, 0.05, None, 0.6], "area_fc": [1.8, None, None, 2.0, 2.0]})
    passed = df.select([r.expr().alias(r.name) for r in DEFAULT_RULES])
    assert passed["reduced_count_enlarged_nuclei"].to_list() == [True, False, False, False, False]
    assert passed["strong_loss"].to_list() == [False, False, True, False, False]
    rule = HitRule.parse("mine", "count_fc <= 0.5 AND area_fc>=2")
    assert rule.conditions == (Condition("count_fc", "<=", 0.5), Condition("area_fc", ">=", 2.0))
    assert str(rule) == "count_fc <= 0.5 and area_fc >= 2"
    assert df.select(rule.expr())["count_fc"].to_list() == [False, False, False, False, False]
    with pytest.raises(UserError, match="cannot read 'area_fc ~ 2'"):
        HitRule.parse("bad", "count_fc < 0.5 and area_fc ~ 2")
    with pytest.raises(UserError, match="letters, digits"):
        HitRule("bad name", "", (Condition("count_fc", "<", 1.0),))


def test_call_hits_and_controls():
    wells, lay = plate_one()
    norm = normalize_plates(wells, lay)
    genes = pl.DataFrame({"gene_symbol": ["A", "B", "C", "D"], "count_fc": [0.3, 0.05, 1.0, 0.02],
                          "area_fc": [1.9, 2.0, 2.5, None]})
    hits = call_hits(genes)
    assert hits["gene_symbol"].to_list() == ["D", "B", "A"]
    assert hits["hit_rules"].to_list() == ["strong_loss", "reduced_count_enlarged_nuclei, strong_loss",
                                           "reduced_count_enlarged_nuclei"]
    controls = control_summary(norm)
    assert controls.select("role", "control_name").rows() == [
        ("negative", "OTP"), ("negative", "mock"), ("positive", "KIF11"), ("positive", "PLK1")]
    assert controls["reference"].to_list() == [True, False, False, False]
    assert controls["count_fc"].to_list() == [1.0, 0.2, 4 / 25, 2 / 25]
    assert controls["wells_pass_strong_loss"].to_list() == [0, 0, 0, 1]


def test_positive_z_primes_per_control_and_plate():
    rows = [("P1", "negative", "OTP", True, v) for v in (98.0, 100.0, 102.0)]
    rows += [("P1", "positive", "PLK1", False, v) for v in (0.0, 2.0, 4.0)]
    rows += [("P1", "positive", "KIF11", False, v) for v in (40.0, 50.0, 60.0)]
    rows += [("P2", "negative", "OTP", True, 90.0), ("P2", "negative", "OTP", True, None),
             ("P2", "positive", "PLK1", False, 1.0), ("P2", "positive", "PLK1", False, 3.0)]
    wells = pl.DataFrame(rows, schema=["plate", "role", "control_name", "is_reference", "nuclei_per_field"],
                         orient="row")
    z = positive_z_primes(wells)
    assert z.select("plate", "control_name").rows() == [("P1", "KIF11"), ("P1", "PLK1"), ("P2", "PLK1")]
    s = MAD_SCALE
    expected = [1 - 3 * (10 * s + 2 * s) / 50, 1 - 3 * (2 * s + 2 * s) / 98, None]  # P2: one analysed reference well
    got = z["z_prime_robust"].to_list()
    assert got[:2] == pytest.approx(expected[:2]) and got[2] is None


def test_rule_on_a_missing_column_is_a_user_error():
    wells, lay = plate_one()
    norm = normalize_plates(wells, lay)
    per_nucleus = HitRule.parse("mn", "micronuclei_per_nucleus > 0.2")  # a well column, not a gene column
    genes = aggregate_genes(norm, [per_nucleus])
    assert genes["wells_pass_mn"].to_list() == [0, 0, 0]
    with pytest.raises(UserError, match="hit rule mn: the gene table has no column 'micronuclei_per_nucleus'; "
                                        "use one of .*count_fc"):
        call_hits(genes, [per_nucleus])
    typo = HitRule.parse("typo", "count_FC < 0.5")
    for run in (lambda: aggregate_genes(norm, [typo]), lambda: control_summary(norm, [typo])):
        with pytest.raises(UserError, match="hit rule typo: the well table has no column 'count_FC'"):
            run()


def test_format_table():
    df = pl.DataFrame({"gene": ["FBXO5", "UBB"], "count_fc": [0.41234, 0.0], "area_fc": [1.876, None],
                       "wells": [3, 12]})
    assert format_table(df).splitlines() == [
        "gene   count_fc  area_fc  wells",
        "-----  --------  -------  -----",
        "FBXO5     0.412    1.876      3",
        "UBB           0        -     12",
    ]
    assert format_table(df, max_rows=1).splitlines()[-1] == "... 1 more rows"
    assert format_table(df.head(0)).splitlines()[-1] == "(none)"
