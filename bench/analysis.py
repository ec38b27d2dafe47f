"""Screen analysis speed: a whole screen's image table to every table of ``nucleiscreen analyze``.

Writes a synthetic run folder the size of the seed lab's screen: 213 plates x 384 wells x 16 fields =
1,308,672 image rows, one Parquet part per plate, with the engine's columns (focus and saturation included, so
frame QC runs), controls in columns 1 and 24 given once for every plate (wildcard rows of the layout), each
gene in 4 wells on different plates, and the paper's four hits planted. Then times, as median of ``repeats``
runs on the machine's default polars thread pool:

- ``tables``: ``analyze(run, layout, report=False)`` end to end: reading the parts, frame QC, well aggregation,
  normalization (fold changes, robust z, SSMD, B-score median polish), genes, plate QC, controls, hits, and
  writing ``wells``/``genes``/``plates``/``controls`` Parquet and ``hits.csv``;
- the stages inside it, called one by one (``aggregate_wells`` includes the Parquet scan);
- ``report``: ``report.html`` once (not part of the 30 s target; its frames are not reachable here, so the
  hit frames are listed, not drawn).

With ``--objects`` the run also has an object table (one row per nucleus and micronucleus of every frame, ~60
per field: ~80 M rows for the whole screen) and the tables include the exact median areas from it.

    python -m nucleiscreen.bench.analysis [--plates 213] [--fields 16] [--repeats 3] [--no-report] [--objects]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from nucleiscreen.engine.screen.analyze import analyze
from nucleiscreen.engine.screen.genes import aggregate_genes
from nucleiscreen.engine.screen.hits import call_hits, control_summary
from nucleiscreen.engine.screen.layout import read_layout
from nucleiscreen.engine.screen.plates import normalize_plates
from nucleiscreen.engine.screen.qc import FrameQC, plate_qc
from nucleiscreen.engine.screen.wells import aggregate_wells
from nucleiscreen.simulate import CONTROLS, PLANTED, plate_name, well_names

WELLS_PER_GENE = 4


def write_screen(root: Path, plates: int = 213, fields: int = 16, seed: int = 0, objects: bool = False
                 ) -> tuple[Path, Path, int]:
    """Write ``root/run/images/plate=*/part-00000.parquet`` (and ``objects/`` likewise) and ``root/layout.csv``;
    return the run folder, the layout and the number of image rows."""
    rng = np.random.default_rng(seed)
    wells = well_names()
    control_wells = [f"{r}{c:02d}" for c in (1, 24) for r in "ABCDEFGHIJKLMNOP"]
    controls, i = {}, 0
    for gene, role, count, area, k in CONTROLS:
        for _ in range(k):
            controls[control_wells[i]] = (gene, role, count, area)
            i += 1
    sample_wells = [w for w in wells if w not in controls]
    slots = plates * len(sample_wells)
    genes = np.array(list(PLANTED) + [f"G{g:05d}" for g in range(slots // WELLS_PER_GENE - len(PLANTED))])
    # gene g's siRNAs in slots g, g + n, g + 2n, ...: different plates, shuffled within each plate
    gene_of_slot = np.resize(np.arange(genes.size), slots)
    rng.shuffle(gene_of_slot.reshape(plates, len(sample_wells)).T)
    layout = pl.concat([
        pl.DataFrame({"plate": "*", "well": list(controls), "gene_symbol": [c[0] for c in controls.values()],
                      "role": [c[1] for c in controls.values()]}),
        pl.DataFrame({
            "plate": np.repeat([plate_name(p) for p in range(plates)], len(sample_wells)),
            "well": np.tile(sample_wells, plates), "gene_symbol": genes[gene_of_slot], "role": "sample",
        }),
    ])
    (root / "run").mkdir(parents=True)
    layout_path = root / "layout.csv"
    layout.write_csv(layout_path)

    count_mult = np.ones(len(wells))
    area_mult = np.ones(len(wells))
    well_index = {w: j for j, w in enumerate(wells)}
    sample_index = np.array([well_index[w] for w in sample_wells])
    for w, (_, _, count, area) in controls.items():
        count_mult[well_index[w]], area_mult[well_index[w]] = count, area
    planted = {g: PLANTED[str(genes[g])] for g in range(len(PLANTED))}
    n = len(wells) * fields
    for p in range(plates):
        c, a = count_mult.copy(), area_mult.copy()
        plate_genes = gene_of_slot[p * len(sample_wells):(p + 1) * len(sample_wells)]
        c[sample_index] = rng.lognormal(0, 0.1, len(sample_wells))
        for g, (cm, am) in planted.items():
            c[sample_index[plate_genes == g]], a[sample_index[plate_genes == g]] = cm, am
        nuclei = rng.poisson(60 * np.repeat(c, fields))
        nonborder = rng.binomial(nuclei, 0.85)
        mean_area = 1500 * np.repeat(a, fields) * rng.lognormal(0, 0.05, n)
        name = plate_name(p)
        well = np.repeat(wells, fields)
        site = np.tile(np.arange(fields), len(wells))
        has = nonborder > 0
        table = pl.DataFrame({
            "ImageNumber": np.arange(p * n + 1, (p + 1) * n + 1),
            "Metadata_Plate": name, "Metadata_Well": well,
            "Metadata_Row": np.repeat([w[0] for w in wells], fields),
            "Metadata_Column": np.repeat([int(w[1:]) for w in wells], fields), "Metadata_Site": site,
            "Metadata_Channel": 0, "PathName_DNA": f"/screen/{name}",
            "ImageQuality_FocusScore_DNA": 2e-4 * nuclei * rng.lognormal(0, 0.1, n) + 5e-6,
            "ImageQuality_PercentMaximal_DNA": np.full(n, 4e-4),
            "Count_Nuclei": nuclei, "Count_Micronuclei": rng.poisson(3, n), "Count_Nuclei_NonBorder": nonborder,
            "Total_Nuclei_AreaShape_Area": np.round(mean_area * nonborder).astype(np.int64),
            "Mean_Nuclei_AreaShape_Area": np.where(has, mean_area, np.nan),
            "Median_Nuclei_AreaShape_Area": np.where(has, mean_area * 0.98, np.nan),
            "Mean_Nuclei_Intensity_MeanIntensity_DNA": np.where(has, rng.normal(3000, 200, n), np.nan),
        }).with_columns(
            pl.col("^Mean_.*$", "Median_Nuclei_AreaShape_Area").fill_nan(None),
            FileName_DNA=pl.format("{}_{}f{}d0.C01", "Metadata_Plate", "Metadata_Well",
                                   pl.col("Metadata_Site").cast(pl.String).str.zfill(2)),
        )
        folder = root / "run" / "images" / f"plate={name}"
        folder.mkdir(parents=True)
        table.write_parquet(folder / "part-00000.parquet")
        if objects:
            folder = root / "run" / "objects" / f"plate={name}"
            folder.mkdir(parents=True)
            _objects(table, rng).write_parquet(folder / "part-00000.parquet")
    return root / "run", layout_path, plates * n


def _objects(frames: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """Object rows for the frames: each frame's nuclei (the first ``Count_Nuclei_NonBorder`` off the border,
    areas around the frame's mean) and micronuclei."""
    nuclei = frames["Count_Nuclei"].to_numpy()
    micro = frames["Count_Micronuclei"].to_numpy()
    per_frame = nuclei + micro
    frame = np.repeat(np.arange(frames.height), per_frame)
    rank = np.arange(frame.size) - np.repeat(np.cumsum(per_frame) - per_frame, per_frame)
    is_nucleus = rank < nuclei[frame]
    mean_area = (frames["Total_Nuclei_AreaShape_Area"] / frames["Count_Nuclei_NonBorder"]).fill_null(1500)
    area = np.where(is_nucleus, rng.gamma(25.0, mean_area.fill_nan(1500).to_numpy()[frame] / 25.0),
                    rng.integers(10, 100, frame.size))
    return frames.select("ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site")[frame].with_columns(
        ObjectNumber=pl.Series(rank + 1), AreaShape_Area=pl.Series(np.maximum(area, 1).astype(np.int64)),
        TouchesBorder=pl.Series(is_nucleus & (rank >= frames["Count_Nuclei_NonBorder"].to_numpy()[frame])),
    )


def _median_s(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(plates: int = 213, fields: int = 16, repeats: int = 3, report: bool = True, objects: bool = False
         ) -> dict:
    """Run the benchmark, print its table, return the timings in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        run, layout_path, rows = write_screen(root, plates, fields, objects=objects)
        made = time.perf_counter() - t
        parts = sorted((run / "images").glob("plate=*/part-*.parquet"))
        images = pl.scan_parquet(parts, hive_partitioning=False)
        object_table = None
        if objects:
            object_table = pl.scan_parquet(sorted((run / "objects").glob("plate=*/part-*.parquet")),
                                           hive_partitioning=False)
        n_objects = f" and {object_table.select(pl.len()).collect().item():,} object rows" if objects else ""
        print(f"synthetic screen: {plates} plates x 384 wells x {fields} fields = {rows:,} image rows{n_objects}, "
              f"written in {made:.1f} s; polars {pl.__version__}, {pl.thread_pool_size()} threads, "
              f"{os.cpu_count()} CPUs")

        exclude = FrameQC().exclude(images.collect_schema().names())
        seconds: dict[str, float] = {}
        seconds["read_layout"], layout = _median_s(lambda: read_layout(layout_path), repeats)
        seconds["aggregate_wells (scan + frame QC" + (" + objects)" if objects else ")")], wells = _median_s(
            lambda: aggregate_wells(images, exclude=exclude, objects=object_table), repeats)
        seconds["normalize_plates (FC, z, SSMD, B-score)"], norm = _median_s(
            lambda: normalize_plates(wells, layout, source=layout_path), repeats)
        seconds["aggregate_genes"], genes = _median_s(lambda: aggregate_genes(norm), repeats)
        seconds["plate_qc + control_summary + call_hits"], _ = _median_s(
            lambda: (plate_qc(norm), control_summary(norm), call_hits(genes)), repeats)
        seconds["tables (analyze, report=False)"], result = _median_s(
            lambda: analyze(run, layout_path, root / "out", report=False), repeats)
        width = max(map(len, seconds))
        print(f"median of {repeats} runs:")
        for name, s in seconds.items():
            print(f"  {name:{width}s} {s:7.2f} s")
        print(f"  -> {result.wells.height:,} wells, {result.genes.height:,} genes, {result.plates.height} plates, "
              f"{result.hits.height} hits ({', '.join(result.hits['gene_symbol'])}), "
              f"{int(result.plates['fields_excluded'].sum())} fields excluded by frame QC")
        if report:
            t = time.perf_counter()
            analyze(run, layout_path, root / "with-report")
            seconds["tables + report"] = time.perf_counter() - t
            size = (root / "with-report" / "report.html").stat().st_size / 1e6
            print(f"  {'tables + report (once)':{width}s} {seconds['tables + report']:7.2f} s "
                  f"(report.html {size:.1f} MB)")
        return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=213)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--objects", action="store_true", help="add an object table (~80 M rows at full size)")
    a = parser.parse_args()
    main(a.plates, a.fields, a.repeats, report=not a.no_report, objects=a.objects)
