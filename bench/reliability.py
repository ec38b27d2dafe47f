"""What a screen run survives: SIGKILL at random moments and a catalogue of bad frames, then the tables checked.

A simulated screen (``--plates`` plates of 384 single-field wells, ``--size``^2 frames, TIFF or C01) gets the faults of
``nucleiscreen/faults.py`` planted in every plate. ``segment --objects --checkpoint-seconds S`` runs once undisturbed
into a reference folder, then again into a second folder, SIGKILLed at ``--kills`` random moments (each run started
after a kill resumes the folder, and is killed once it has segmented a random share of what is left) and finally left to
finish. Then the second folder's tables are checked against the catalogue and the reference run:

- rows lost: frames in neither the image nor the error table; rows duplicated: frames in them more than once;
- object rows orphaned: object rows of a frame without an image row, and object parts left without their image part;
  object rows duplicated (ImageNumber, ObjectNumber twice);
- bad frames isolated: planted faults found in the error table at their stage with their reason (and the faults that
  are real frames found in the image table);
- frames differing from the reference: frames whose nucleus count or total area differs from the undisturbed run's;
- work lost per kill: the frames the killed run had segmented (its label images exist, ``--save-labels``) but not
  committed, done again on resume; and those frames in seconds of the undisturbed run's pace: bounded by about S
  plus what is in flight (a batch being read, one at the network, the post-processing queue).

    python -m nucleiscreen.bench.reliability [--plates 3] [--kills 10] [--size 96] [--format tif] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.runfolder import object_parts
from nucleiscreen.faults import C01_FAULTS, TIFF_FAULTS, plant_faults
from nucleiscreen.simulate import simulate_screen


def _segment(images: Path, run: Path, checkpoint: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nucleiscreen", "--quiet", "segment", str(images), "--out", str(run), "--objects",
           "--save-labels", "--checkpoint-seconds", str(checkpoint), "--threads", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _table(run: Path, name: str, parts: list[Path] | None = None) -> pl.DataFrame:
    parts = sorted((run / name).rglob("part-*.parquet")) if parts is None else parts
    return pl.read_parquet(parts, hive_partitioning=False) if parts else pl.DataFrame()


def _lost(run: Path, since: float) -> int:
    """Frames a killed run segmented (its label images, written as each frame is done, are newer than ``since``)
    whose rows it had not committed: the work the kill threw away, done again on resume."""
    images = _table(run, "images")
    committed = {Path(n).stem for n in images["FileName_DNA"]} if images.height else set()
    return sum(1 for p in run.glob("labels/*/*_labels.tif")
               if p.stat().st_mtime >= since and p.name[:-len("_labels.tif")] not in committed)


def _done(run: Path) -> int:
    return sum(_table(run, name).height for name in ("images", "errors"))


def _segmented_since(run: Path, since: float) -> int:
    """Frames segmented since ``since``: their label images are written as each frame is done."""
    return sum(1 for p in run.glob("labels/*/*_labels.tif") if p.stat().st_mtime >= since)


def run_with_kills(images: Path, run: Path, total: int, kills: int, checkpoint: float,
                   rng: np.random.Generator) -> list[int]:
    """Run segment into ``run`` and SIGKILL it ``kills`` times, then let it finish; the frames lost at each kill.
    Each run is killed once it has segmented a random share of what is left (watched through its label images),
    so every kill lands mid-work whatever the machine's speed."""
    lost = []
    while len(lost) < kills:
        target = max(1, round(rng.uniform(0.1, 1.0) * (total - _done(run)) / (kills - len(lost) + 1)))
        t0 = time.time()
        proc = _segment(images, run, checkpoint)
        while proc.poll() is None and _segmented_since(run, t0) < target:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the run finished before kill {len(lost) + 1}: lower --kills or raise --plates "
                               f"({proc.stderr.read().strip()})")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lost.append(_lost(run, t0))
    proc = _segment(images, run, checkpoint)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the final run failed: {err.strip()}")
    return lost


def check(run: Path, ref: Path, frames: list[Path], planted: dict) -> dict:
    """The figures of the module docstring for the run folder ``run`` against the reference ``ref``."""
    images, errors = _table(run, "images"), _table(run, "errors")
    seen = pl.concat([images.select("FileName_DNA"), errors.select("FileName_DNA")])
    names = {p.name for p in frames}
    counts = seen.group_by("FileName_DNA").len()
    objects = _table(run, "objects", object_parts(run))
    on_disk = len(list((run / "objects").rglob("part-*.parquet")))
    refused = {n: f for n, f in planted.items() if f.stage is not None}
    isolated = 0
    for name, stage, error in errors.select("FileName_DNA", "Stage", "Error").iter_rows():
        fault = refused.get(name)
        isolated += fault is not None and stage == fault.stage and fault.reason.lower() in error.lower()
    segmented = images.filter(pl.col("FileName_DNA").is_in([n for n in planted if n not in refused])).height
    key = ["FileName_DNA"]
    cols = ["Count_Nuclei", "Total_Nuclei_AreaShape_Area"]
    both = images.select(*key, *cols).join(_table(ref, "images").select(*key, *cols), on=key, suffix="_ref")
    differ = both.filter(pl.any_horizontal(pl.col(c) != pl.col(c + "_ref") for c in cols)).height
    return {
        "frames": len(names),
        "rows lost": len(names - set(seen["FileName_DNA"])),
        "rows duplicated": int((counts["len"] - 1).clip(0).sum()),
        "object rows orphaned": objects.join(images.select("ImageNumber"), on="ImageNumber", how="anti").height
        + (on_disk - len(object_parts(run))),
        "object rows duplicated": objects.height - objects.select("ImageNumber", "ObjectNumber").n_unique(),
        "bad frames planted": len(planted),
        "bad frames isolated": isolated,
        "bad frames refused": len(refused),
        "real-frame faults segmented": segmented,
        "frames differing from the reference": differ + (images.height - both.height),
    }


def main(plates: int = 3, kills: int = 10, size: int = 96, fmt: str = "tif", seed: int = 0,
         checkpoint: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="nucleiscreen-reliability-") as tmp:
        root = Path(tmp)
        sim = simulate_screen(root / "sim", plates=plates, fields=1, size=size, fmt=fmt, seed=seed, masks=False)
        faults = TIFF_FAULTS if fmt == "tif" else C01_FAULTS
        frames, planted = [], {}
        for plate in sorted(p for p in sim.images.iterdir() if p.is_dir()):
            files = sorted(p for p in plate.iterdir() if p.is_file())
            frames += files
            planted.update(plant_faults(files, faults, read_frame))
        t0 = time.time()
        ref = _segment(sim.images, root / "ref", checkpoint)
        _, err = ref.communicate()
        if ref.returncode != 0:
            raise RuntimeError(f"the reference run failed: {err.strip()}")
        wall = time.time() - t0
        # interpreter, imports, model and discovery before the first frame: the first commit less one checkpoint
        startup = max(0.5, min(p.stat().st_mtime for p in (root / "ref").rglob("part-*.parquet")) - t0 - checkpoint)
        lost = run_with_kills(sim.images, root / "run", len(frames), kills, checkpoint, rng)
        pace = max(wall - startup, 1.0) / len(frames)  # seconds of work per frame, undisturbed
        result = {"kills survived": len(lost), **check(root / "run", root / "ref", frames, planted),
                  "frames lost per kill (mean / max)": f"{np.mean(lost):.1f} / {np.max(lost)}",
                  "work lost per kill, s (mean / max)": f"{np.mean(lost) * pace:.2f} / {np.max(lost) * pace:.2f}",
                  "checkpoint seconds": checkpoint, "undisturbed run, s": round(wall, 1)}
    print(f"reliability: {plates} plate(s) of {size}^2 {fmt.upper()} frames, {len(planted)} bad frames planted, "
          f"{kills} SIGKILLs")
    print("| figure | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v} |")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--format", choices=("tif", "c01"), default="tif")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-seconds", type=float, default=1.0)
    parser.add_argument("--json", help="also write the figures to this file")
    a = parser.parse_args()
    figures = main(a.plates, a.kills, a.size, a.format, a.seed, a.checkpoint_seconds)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
