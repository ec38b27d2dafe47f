"""--executor ray: the tables of a single-node run, a lost worker costs nothing, and without Ray one clear line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from nucleiscreen.cli import main
from nucleiscreen.errors import UserError
from nucleiscreen.simulate import simulate_screen

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return simulate_screen(tmp_path_factory.mktemp("ray") / "sim", plates=3, fields=1, size=64, seed=4,
                           masks=False)


def _table(run: Path, table: str) -> pl.DataFrame:
    df = pl.read_parquet(run / table, hive_partitioning=False)
    return df.sort(["ImageNumber", "ObjectNumber"] if table == "objects" else "ImageNumber")


def test_ray_executor_gives_the_tables_of_a_local_run(screen, tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert main(["--quiet", "segment", str(screen.images), "--out", str(local), "--objects"]) == 0
    assert main(["--quiet", "segment", str(screen.images), "--out", str(distributed), "--objects",
                 "--executor", "ray", "--workers", "2"]) == 0
    for table in ("images", "objects"):
        a, b = _table(local, table), _table(distributed, table)
        assert a.height > 0 and a.equals(b), table
    assert _table(local, "images")["ImageNumber"].to_list() == list(range(1, 3 * 384 + 1))
    manifest = __import__("json").loads((distributed / "manifest.json").read_text())["sessions"][-1]
    assert manifest["executor"] == "ray" and manifest["workers"] == 2 and manifest["units"] == 3
    # a second run resumes: nothing left to do
    assert main(["--quiet", "segment", str(screen.images), "--out", str(distributed), "--objects",
                 "--executor", "ray", "--workers", "2"]) == 0
    assert _table(distributed, "images").height == 3 * 384


def _worker_pids() -> list[int]:
    """The Ray actor processes of the executor (Ray titles them ray::UnitWorker...)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::UnitWorker"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_a_killed_worker_is_restarted_and_no_frame_is_lost_or_doubled(screen, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nucleiscreen", "--quiet", "segment", str(screen.images), "--out", str(run),
           "--executor", "ray", "--workers", "2", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _worker_pids() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    while not list((run / "images").rglob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    killed = _worker_pids()
    assert killed and proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(killed[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0
    images = _table(run, "images")
    assert images.height == 3 * 384 and images["ImageNumber"].n_unique() == 3 * 384
    assert not (run / "errors").exists()


def test_without_ray_the_executor_is_one_clear_line(screen, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    assert main(["segment", str(screen.images), "--out", str(tmp_path / "run"), "--executor", "ray"]) == 2
    assert "pip install 'nucleiscreen[ray]'" in capsys.readouterr().err


def test_ray_options_need_the_ray_executor(screen, tmp_path, capsys):
    assert main(["segment", str(screen.images), "--out", str(tmp_path / "run"), "--workers", "2"]) == 2
    assert "--executor ray" in capsys.readouterr().err


def test_frame_segmenter_with_auto_scale_takes_each_plates_scale(screen, tmp_path):
    from nucleiscreen.engine.discover import discover
    from nucleiscreen.engine.model import load_model_info
    from nucleiscreen.engine.pipeline import SegmentOptions
    from nucleiscreen.engine.ray_executor import FrameSegmenter, screen_scales
    from nucleiscreen.engine.run import numbered_frames, segment

    found = discover([screen.images])
    frames = numbered_frames(found).filter(pl.col("Metadata_Plate") == pl.col("Metadata_Plate").first()).head(8)
    plate = frames["Metadata_Plate"][0]
    batch = {k: frames[k].to_numpy() for k in frames.columns}
    with pytest.raises(UserError, match="scales"):
        FrameSegmenter(pixel_size="auto")
    with pytest.raises(UserError, match="no scale for plate"):
        FrameSegmenter(pixel_size="auto", scales={"other": 1.0})(batch)
    assert abs(screen_scales(found)[plate] - 1.0) <= 0.1  # simulated at the model's own scale
    out = pl.DataFrame(FrameSegmenter(pixel_size="auto", scales={plate: {"scale": 1.25}}, batch_size=4)(batch))
    px = 1.25 * load_model_info().card["pixel_size_um"]  # the same factor, given as a pixel size
    segment(found, tmp_path / "local", options=SegmentOptions(progress=False, pixel_size=px))
    local = _table(tmp_path / "local", "images").join(frames.select("ImageNumber"), on="ImageNumber")
    assert out.drop("Stage", "Error").equals(local.select(out.drop("Stage", "Error").columns))


def test_ray_data_frame_segmenter_gives_the_image_rows_of_a_local_run(screen, tmp_path):
    """FrameSegmenter is the map_batches callable (called here on one batch, as a Ray Data actor calls it)."""
    from nucleiscreen.engine.discover import discover
    from nucleiscreen.engine.pipeline import SegmentOptions
    from nucleiscreen.engine.ray_executor import FrameSegmenter
    from nucleiscreen.engine.run import numbered_frames, segment

    found = discover([screen.images])
    frames = numbered_frames(found).head(24)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    batch = {k: frames[k].to_numpy() for k in frames.columns}
    batch["PathName_DNA"][3], batch["FileName_DNA"][3] = str(tmp_path), broken.name
    out = pl.DataFrame(FrameSegmenter(batch_size=4)(batch))
    assert out.height == 24 and out["Stage"].to_list()[3] == "decode" and out["Error"][3]
    segment(found, tmp_path / "local", options=SegmentOptions(progress=False))
    local = _table(tmp_path / "local", "images").head(24)
    good = out.filter(pl.col("Error").is_null()).drop("Stage", "Error")
    assert good.equals(local.filter(pl.col("ImageNumber") != 4).select(good.columns))
