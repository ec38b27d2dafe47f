"""The analysis end to end on a small synthetic screen: planted hits called, neutral genes and controls
not."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import imagecodecs
import numpy as np
import polars as pl
import pytest
import tifffile

from nucleiscreen.engine.screen.analyze import analyze
from nucleiscreen.engine.screen.genes import aggregate_genes
from nucleiscreen.engine.screen.hits import call_hits, control_summary
from nucleiscreen.engine.screen.layout import read_layout
from nucleiscreen.engine.screen.plates import normalize_plates
from nucleiscreen.engine.screen.qc import plate_qc
from nucleiscreen.engine.screen.report import example_frames, frame_thumbnail
from nucleiscreen.engine.screen.report.text import format_table
from nucleiscreen.engine.screen.wells import aggregate_wells
from nucleiscreen.errors import UserError

PLATES = ("MFGTMPcx7_170702000001", "MFGTMPcx7_170702000002")
FIELDS = 4
NEUTRAL = [f"GENE{i:02d}" for i in range(24)]
# gene -> (count factor, area factor), as planted by the simulator
PLANTED = {"FBXO5": (0.35, 1.9), "CCNA2": (0.42, 1.8), "UBB": (0.05, 1.3), "POLR2A": (0.03, 1.2)}
CONTROLS = {  # well -> (name, role, count factor, area factor); the same wells on every plate
    "B02": ("OTP", "negative", 1.0, 1.0), "C02": ("OTP", "negative", 1.0, 1.0),
    "D02": ("OTP", "negative", 1.0, 1.0), "E02": ("OTP", "negative", 1.0, 1.0),
    "B23": ("mock", "negative", 0.9, 1.0), "C23": ("mock", "negative", 0.9, 1.0),
    "D23": ("untransfected", "negative", 1.1, 1.0), "E23": ("untransfected", "negative", 1.1, 1.0),
    "F02": ("PLK1", "positive", 0.04, 2.2), "G02": ("PLK1", "positive", 0.04, 2.2),
    "F23": ("KIF11", "positive", 0.06, 2.0), "G23": ("KIF11", "positive", 0.06, 2.0),
    "H02": ("LIPA", "other", 0.8, 1.1), "H23": ("LIPA", "other", 0.8, 1.1),
}
FAILED = (PLATES[0], "I03", (3, 4))  # a neutral well whose fields 3 and 4 failed to decode


def synthetic_screen(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """Image rows, error rows and a layout CSV (wildcard controls, explicit samples) for a 2-plate screen."""
    rng = np.random.default_rng(seed)
    layout = ["Plate,Well,Gene Symbol,Type,siRNA ID"]
    layout += [f"*,{w},{name},{role}," for w, (name, role, _, _) in CONTROLS.items()]
    effects, dead = {}, None
    sample_wells = [f"{r}{c:02d}" for r in "IJKLMNOP" for c in range(3, 23)]
    for plate in PLATES:
        genes = [*NEUTRAL, *[g for g in PLANTED for _ in range(2)]]
        for i, (well, gene) in enumerate(zip(sample_wells, genes, strict=False)):
            layout.append(f"{plate},{well[0]}{int(well[1:])},{gene},sample,s{i}")  # 'I3' spelling on purpose
            effects[plate, well] = PLANTED.get(gene, (1.0, 1.0))
            if gene == "UBB" and plate == PLATES[1] and dead is None:
                dead = (plate, well)  # one UBB well without a single nucleus
        for well, (_, _, count, area) in CONTROLS.items():
            effects[plate, well] = (count, area)
    rows = []
    for (plate, well), (count, area) in effects.items():
        for site in range(1, FIELDS + 1):
            if (plate, well) == FAILED[:2] and site in FAILED[2]:
                continue
            n = 0 if (plate, well) == dead else int(round(200 * count * rng.lognormal(0, 0.08)))
            nb = int(round(0.85 * n))
            mean_area = 400 * area * rng.lognormal(0, 0.04)
            rows.append({
                "ImageNumber": len(rows) + 1, "Metadata_Plate": plate, "Metadata_Well": well,
                "Metadata_Row": well[0], "Metadata_Column": int(well[1:]), "Metadata_Site": site,
                "Metadata_Channel": 0, "PathName_DNA": f"/screen/{plate}",
                "FileName_DNA": f"{plate}_{well}f{site - 1:02d}d0.C01", "Count_Nuclei": n,
                "Count_Micronuclei": int(rng.integers(0, 5)), "Count_Nuclei_NonBorder": nb,
                "Total_Nuclei_AreaShape_Area": mean_area * nb,
                "Mean_Nuclei_AreaShape_Area": mean_area if nb else None,
                "Median_Nuclei_AreaShape_Area": mean_area * 0.97 if nb else None,
                "Mean_Nuclei_Intensity_MeanIntensity_DNA": 1500.0 if nb else None,
            })
    plate, well, sites = FAILED
    errors = pl.DataFrame({
        "PathName_DNA": [f"/screen/{plate}"] * len(sites),
        "FileName_DNA": [f"{plate}_{well}f{s - 1:02d}d0.C01" for s in sites],
        "Stage": ["decode"] * len(sites), "Error": ["zlib: incomplete stream"] * len(sites),
        "Metadata_Plate": [plate] * len(sites), "Metadata_Well": [well] * len(sites),
        "Metadata_Site": list(sites),
    })
    images = pl.DataFrame(rows, schema_overrides={"Mean_Nuclei_AreaShape_Area": pl.Float64,
                                                  "Median_Nuclei_AreaShape_Area": pl.Float64,
                                                  "Mean_Nuclei_Intensity_MeanIntensity_DNA": pl.Float64})
    return images, errors, "\n".join(layout) + "\n"


def write_run(tmp_path) -> tuple:
    images, errors, layout_text = synthetic_screen()
    run = tmp_path / "run"
    for (plate,), part in images.partition_by("Metadata_Plate", as_dict=True).items():
        folder = run / "images" / f"plate={plate}"
        folder.mkdir(parents=True)
        half = part.height // 2  # two parts per plate, as a streaming writer leaves them
        part[:half].write_parquet(folder / "part-00000.parquet")
        part[half:].write_parquet(folder / "part-00001.parquet")
    (run / "errors").mkdir()
    errors.write_parquet(run / "errors" / "part-00000.parquet")
    layout = tmp_path / "layout.csv"
    layout.write_text(layout_text)
    return run, layout


def test_planted_genes_called_neutral_and_controls_not(tmp_path):
    images, errors, layout_text = synthetic_screen()
    (tmp_path / "layout.csv").write_text(layout_text)
    wells = normalize_plates(aggregate_wells(images.lazy(), errors), read_layout(tmp_path / "layout.csv"))
    genes = aggregate_genes(wells)
    hits = call_hits(genes)
    rules = dict(zip(hits["gene_symbol"], hits["hit_rules"], strict=True))
    assert set(rules) == set(PLANTED)
    assert rules["FBXO5"] == rules["CCNA2"] == "reduced_count_enlarged_nuclei"
    assert "strong_loss" in rules["UBB"] and "strong_loss" in rules["POLR2A"]
    assert hits["count_fc"].is_sorted()
    # every planted gene's 4 wells pass its rule; UBB's dead well has no area but a count FC of 0
    g = {r["gene_symbol"]: r for r in genes.iter_rows(named=True)}
    assert g["FBXO5"]["wells"] == 4 and g["FBXO5"]["wells_pass_reduced_count_enlarged_nuclei"] == 4
    assert g["UBB"]["wells_pass_strong_loss"] == 4 and g["UBB"]["area_fc"] == pytest.approx(1.3, rel=0.1)
    ubb = wells.filter(pl.col("gene_symbol") == "UBB").sort("count_fc")
    assert (ubb["count_fc"][0], ubb["area_fc"][0], ubb["area_fc"].null_count()) == (0.0, None, 1)
    assert all(0.8 < g[n]["count_fc"] < 1.25 and 0.9 < g[n]["area_fc"] < 1.1 for n in NEUTRAL)

    # the failed fields lower nothing: the well's count per field stays at the neutral level
    failed = wells.filter((pl.col("plate") == FAILED[0]) & (pl.col("well") == FAILED[1])).row(0, named=True)
    assert (failed["fields_analysed"], failed["fields_failed"]) == (2, 2)
    assert 0.8 < failed["count_fc"] < 1.25

    controls = control_summary(wells)
    c = {r["control_name"]: r for r in controls.iter_rows(named=True)}
    assert set(c) == {"OTP", "mock", "untransfected", "PLK1", "KIF11", "LIPA"}
    assert c["OTP"]["reference"] and not c["mock"]["reference"]
    assert c["PLK1"]["count_fc"] < 0.1 and c["PLK1"]["wells_pass_strong_loss"] == 4
    assert c["KIF11"]["role"] == "positive" and c["LIPA"]["role"] == "other"
    assert 0.8 < c["mock"]["count_fc"] < 1.0
    assert c["PLK1"]["z_prime_robust"] > 0.5 and c["KIF11"]["z_prime_robust"] > 0.5
    assert c["OTP"]["z_prime_robust"] is None

    qc = plate_qc(wells)
    assert qc["plate"].to_list() == list(PLATES)
    assert qc["z_prime"].min() > 0.5 and qc["z_prime_robust"].min() > 0.5
    assert qc["fields_failed"].to_list() == [2, 0]
    text = format_table(hits.select("gene_symbol", "hit_rules", "count_fc", "area_fc"))
    assert "FBXO5" in text and "GENE" not in text


def test_analyze_writes_every_output(tmp_path):
    run, layout = write_run(tmp_path)
    result = analyze(run, layout)
    out = run / "analysis"
    assert result.out_dir == out
    names = {"wells.parquet", "genes.parquet", "plates.parquet", "controls.parquet", "hits.csv",
             "report.html"}
    assert {p.name for p in out.iterdir()} == names  # and no temporary file left behind
    assert set(pl.read_csv(out / "hits.csv")["gene_symbol"]) == set(PLANTED)
    wells_per_plate = len(CONTROLS) + len(NEUTRAL) + 2 * len(PLANTED)
    assert pl.read_parquet(out / "wells.parquet").height == len(PLATES) * wells_per_plate
    assert pl.read_parquet(out / "plates.parquet")["z_prime"].null_count() == 0
    assert pl.read_parquet(out / "genes.parquet").equals(result.genes)
    assert result.unplaced_failures == 0

    page = (out / "report.html").read_text()
    for gene in PLANTED:
        assert f">{gene}</text>" in page  # labelled in the scatter
        assert f"<td>{gene}</td>" in page  # and in the hit table
    assert page.count("<figure class='plate'>") == len(PLATES)
    assert "<script" not in page and "src=" not in page and "href=" not in page  # self-contained
    # the frames of /screen/... are not on this machine: the report lists the frames it would show
    assert "None of the hits' frames is reachable" in page and page.count("/screen/") == 2 * 2 * len(PLANTED)
    # a second run (another output folder) gives the same hits
    again = analyze(run, layout, out_dir=tmp_path / "elsewhere")
    assert again.hits.equals(result.hits)


def test_analyze_user_errors(tmp_path):
    with pytest.raises(UserError, match="run folder .* does not exist"):
        analyze(tmp_path / "missing", tmp_path / "layout.csv")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="no image table under .*images: run `nucleiscreen segment` first"):
        analyze(tmp_path / "empty", tmp_path / "layout.csv")
    run, layout = write_run(tmp_path)
    one_plate = "\n".join(line for line in layout.read_text().splitlines() if PLATES[1] not in line)
    layout.write_text(one_plate + "\n")
    with pytest.raises(UserError, match=f"layout.csv: no rows for 1 plate.*: {PLATES[1]}"):
        analyze(run, layout)
    assert not (run / "analysis").exists()


# --- report frames -----------------------------------------------------------------------------------------


def disk_frame(size: int = 48, radius: int = 10) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius ** 2
    return np.where(inside, 3000, 300).astype(np.uint16), inside.astype(np.uint16)


def test_frame_thumbnail_outlines(tmp_path):
    frame, labels = disk_frame()
    tifffile.imwrite(tmp_path / "f.tif", frame)
    tifffile.imwrite(tmp_path / "f_labels.tif", labels)
    tifffile.imwrite(tmp_path / "other_labels.tif", labels[:40])
    rgb = imagecodecs.jpeg8_decode(frame_thumbnail(tmp_path / "f.tif", tmp_path / "f_labels.tif", size=48))
    assert rgb.shape == (48, 48, 3)
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    assert r[24, 14] > 200 and b[24, 14] < 100  # the disk's edge (x = 24 - 10) is outlined in yellow
    assert abs(r[24, 24] - b[24, 24]) < 20 and r[24, 24] > 200  # its inside stays grey, bright
    assert r[2, 2] < 40  # background dark
    # no labels, or labels of another shape: no outline; an unreadable frame: None
    plain = imagecodecs.jpeg8_decode(frame_thumbnail(tmp_path / "f.tif", tmp_path / "other_labels.tif"))
    assert abs(int(plain[24, 14, 0]) - int(plain[24, 14, 2])) < 20
    assert frame_thumbnail(tmp_path / "missing.tif") is None
    # a large frame: its centre crop, shrunk by an integer factor
    big = np.zeros((1104, 1104), np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", big)
    assert imagecodecs.jpeg8_decode(frame_thumbnail(tmp_path / "big.tif")).shape == (256, 256, 3)


def test_report_shows_hit_frames_next_to_reference_frames(tmp_path):
    run, layout = write_run(tmp_path)
    frames = tmp_path / "frames"
    frame, labels = disk_frame()
    for part in sorted((run / "images").glob("plate=*/part-*.parquet")):
        table = pl.read_parquet(part).with_columns(
            PathName_DNA=pl.lit(str(frames)) + "/" + pl.col("Metadata_Plate"),
            FileName_DNA=pl.col("FileName_DNA").str.replace(r"\.C01$", ".tif"),
        )
        table.write_parquet(part)
        for plate, name in table.select("Metadata_Plate", "FileName_DNA").iter_rows():
            (frames / plate).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(frames / plate / name, frame)
            if plate == PLATES[0]:  # label images for the first plate only
                folder = run / "labels" / f"plate={plate}"
                folder.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(folder / name.replace(".tif", "_labels.tif"), labels)
    result = analyze(run, layout)

    images = pl.scan_parquet(sorted((run / "images").glob("plate=*/part-*.parquet")))
    examples = example_frames(images, result.wells, result.hits, run)
    assert examples["gene_symbol"].unique(maintain_order=True).to_list() == result.hits["gene_symbol"].to_list()
    wells = result.wells
    for r in examples.iter_rows(named=True):
        # the hit well's count FC is among the closest 2 to the gene's; the reference well is OTP of its plate
        mine = wells.filter(pl.col("gene_symbol") == r["gene_symbol"])
        closest = (mine["count_fc"] - r["gene_count_fc"]).abs().sort()
        assert abs(r["count_fc"] - r["gene_count_fc"]) <= closest[1]
        refs = wells.filter(pl.col("is_reference") & (pl.col("plate") == r["plate"]))
        assert r["ref_well"] in refs["well"].to_list() and r["ref_control_name"] == "OTP"
        assert abs(r["ref_count_fc"] - 1) == (refs["count_fc"] - 1).abs().min()
        # the most typical field: its count is the closest to the well's nuclei per field
        fields = images.filter((pl.col("Metadata_Plate") == r["plate"]) & (pl.col("Metadata_Well") == r["well"]))
        per_field = wells.filter((pl.col("plate") == r["plate"]) & (pl.col("well") == r["well"]))
        target = per_field["nuclei_per_field"].item()
        best = fields.select((pl.col("Count_Nuclei") - target).abs().min()).collect().item()
        assert abs(r["nuclei"] - target) == best
        assert Path(r["frame"]).is_file()
        assert (r["labels"] is not None) == (r["plate"] == PLATES[0])
    assert examples.group_by("gene_symbol").len()["len"].to_list() == [2] * 4

    page = (run / "analysis" / "report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 * examples.height and "frame not reachable" not in page
    assert all(src.startswith("data:image/jpeg;base64,") for src in sources)  # embedded, nothing fetched
    first = base64.b64decode(sources[0].split(",", 1)[1])
    assert imagecodecs.jpeg8_decode(first).shape == (48, 48, 3)
    assert page.count("no label image") == (examples["plate"] != PLATES[0]).sum()


def test_cli_rules_and_reference(tmp_path, capsys):
    from nucleiscreen.cli import main

    run, layout = write_run(tmp_path)
    assert main(["analyze", str(run), "--layout", str(layout), "--no-report",
                 "--rule", "strong_loss=count_fc < 0.1"]) in (0, None)
    assert set(pl.read_csv(run / "analysis" / "hits.csv")["gene_symbol"]) == {"UBB", "POLR2A"}
    assert main(["analyze", str(run), "--layout", str(layout), "--no-report", "--reference", "OTP",
                 "--out", str(tmp_path / "otp")]) in (0, None)
    assert set(pl.read_csv(tmp_path / "otp" / "hits.csv")["gene_symbol"]) == set(PLANTED)
    capsys.readouterr()
    for bad in (["--rule", "count_fc < 0.1"], ["--rule", "x=count_fc << 2"], ["--rule", "x=colour < 2"],
                ["--reference", "siNothing"]):
        assert main(["analyze", str(run), "--layout", str(layout), "--no-report", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err, err


def test_analyze_names_the_plates_a_run_has_not_finished(tmp_path):
    """Against the frames per plate that segment discovered: a run of one shard of two leaves every plate half
    done, and analyze says so; once the other shard is in, it says nothing."""
    from nucleiscreen.engine.pipeline import SegmentOptions
    from nucleiscreen.engine.run import segment
    from nucleiscreen.simulate import simulate_screen

    sim = simulate_screen(tmp_path / "sim", plates=2, fields=1, size=128, seed=9, masks=False)
    run = tmp_path / "run"
    segment([sim.images], run, options=SegmentOptions(progress=False, shard=(0, 2)))
    notes = analyze(run, sim.layout, report=False).notes
    incomplete = [n for n in notes if n.startswith("Incomplete run")]
    assert len(incomplete) == 1 and "2 plate(s) incomplete" in incomplete[0] and "192/384" in incomplete[0]
    segment([sim.images], run, options=SegmentOptions(progress=False, shard=(1, 2)))
    assert not [n for n in analyze(run, sim.layout, report=False).notes if n.startswith("Incomplete run")]
