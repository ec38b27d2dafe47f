"""The plumbing from frames to the run folder, with the shipped model on the CPU."""

import json

import numpy as np
import polars as pl
import pytest
import tifffile

from nucleiscreen.cli import main
from nucleiscreen.engine.backends import SyncBackend
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError
from nucleiscreen.simulate import FrameSpec, simulate_screen, synth_frame

IMAGE_COLUMNS = ["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Column", "Metadata_Site",
                 "Metadata_Channel", "PathName_DNA", "FileName_DNA", "Count_Nuclei", "Count_Micronuclei",
                 "Count_Nuclei_NonBorder", "Total_Nuclei_AreaShape_Area", "Mean_Nuclei_AreaShape_Area"]


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    return simulate_screen(root / "sim", plates=1, fields=1, size=128, seed=2, masks=False)


def _images(run):
    return pl.read_parquet(sorted((run / "images").rglob("part-*.parquet")), hive_partitioning=False)


def test_segment_writes_run_folder_and_resumes(screen, tmp_path):
    run = tmp_path / "run"
    res = segment([screen.images], run, options=SegmentOptions(progress=False, batch_size=16))
    assert res.frames == 384 and res.failed == 0
    df = _images(run)
    assert df.height == 384 and df["ImageNumber"].n_unique() == 384
    assert set(IMAGE_COLUMNS) <= set(df.columns)
    assert df["Metadata_Well"].n_unique() == 384 and (df["Metadata_Channel"] == 0).all()
    plate = df["Metadata_Plate"][0]
    assert (run / "images" / f"plate={plate}").is_dir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["model"]["sha256"]) == 64 and manifest["sessions"][0]["frames"] == 384
    again = segment([screen.images], run, options=SegmentOptions(progress=False))
    assert again.frames == 0 and again.skipped == 384
    assert _images(run).height == 384  # exactly one row per frame after a resume


def test_bad_frame_goes_to_error_table(screen, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    names = sorted(p.name for p in (screen.images).rglob("*.tif"))[:5]
    for name in names[:4]:
        (src / name).write_bytes(next(screen.images.rglob(name)).read_bytes())
    (src / names[4]).write_bytes(b"not a tiff at all")
    run = tmp_path / "run"
    res = segment([src], run, options=SegmentOptions(progress=False))
    assert res.failed == 1
    errors = pl.read_parquet(sorted((run / "errors").glob("part-*.parquet")))
    assert errors.height == 1 and errors["FileName_DNA"][0] == names[4] and errors["Stage"][0] == "decode"
    assert _images(run).height == 4


def test_objects_and_label_images(screen, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    img, _ = synth_frame(np.random.default_rng(0), (256, 256))
    tifffile.imwrite(src / "P1_B03f00d0.tif", img)
    run = tmp_path / "run"
    segment([src], run, options=SegmentOptions(progress=False, objects=True, save_labels=True))
    objects = pl.read_parquet(sorted((run / "objects").rglob("part-*.parquet")), hive_partitioning=False)
    labels = tifffile.imread(run / "labels" / "plate=P1" / "P1_B03f00d0_labels.tif")
    assert labels.dtype == np.uint16 and labels.shape == (256, 256)
    assert objects.height == labels.max()
    assert {"ImageNumber", "ObjectNumber", "AreaShape_Area", "Metadata_Well"} <= set(objects.columns)
    row = _images(run).row(0, named=True)
    assert row["Count_Nuclei"] + row["Count_Micronuclei"] == objects.height


def test_odd_frame_sizes_are_padded_and_cropped():
    seg = Segmenter()
    img, _ = synth_frame(np.random.default_rng(4), (101, 77))
    (classes,) = seg.classes([seg.prepare(img)])
    assert classes.shape == (101, 77) and classes.dtype == np.uint8


def test_background_only_frame_gives_no_nuclei():
    seg = Segmenter()
    for seed in range(3):
        empty, _ = synth_frame(np.random.default_rng(seed), (512, 512),
                               FrameSpec(nuclei_per_frame=0.0, micronuclei_fraction=0.0))
        (classes,) = seg.classes([seg.prepare(empty)])
        assert seg.instances(classes, empty).max() == 0


def test_post_processing_follows_the_model_card_unless_overridden(tmp_path, capsys):
    seg = Segmenter()
    post = seg.info.postprocessing  # what the trainer validated the model with
    assert (seg.post.max_grow, seg.post.min_area) == (post["max_grow"], post["min_area"])
    n = post["min_area"]
    classes = np.zeros((32, 40), np.uint8)
    classes[10, 2:2 + n] = 1  # a micronucleus seed of exactly the card's min_area
    raw = np.full((32, 40), 100, np.uint16)
    raw[10, 2:2 + n] = 1000
    assert seg.instances(classes, raw).max() == 1
    assert Segmenter(overrides={"min_area": n + 1}).instances(classes, raw).max() == 0
    assert Segmenter(overrides={"min_area": 1}).post.min_area == 1
    tifffile.imwrite(tmp_path / "a.tif", raw)
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--min-area", "-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-area") and "Traceback" not in err


def test_model_or_settings_from_another_run_are_refused_unless_overwrite(screen, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"model": {"sha256": "0" * 64, "path": "old.onnx"}}))
    with pytest.raises(UserError, match="another model"):
        segment([screen.images], run, options=SegmentOptions(progress=False))
    src = tmp_path / "frames"
    src.mkdir()
    for p in sorted(screen.images.rglob("*.tif"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    res = segment([src], run, options=SegmentOptions(progress=False, overwrite=True))
    assert res.frames == 3
    with pytest.raises(UserError, match="micronucleus_area=100"):
        segment([src], run, options=SegmentOptions(progress=False, micronucleus_area=50))
    assert _images(run).height == 3


def test_a_run_goes_on_with_the_model_it_was_begun_with(screen, tmp_path):
    from nucleiscreen.engine.model import load_model_info

    src = tmp_path / "frames"
    src.mkdir()
    frames = sorted(screen.images.rglob("*.tif"))[:4]
    for p in frames[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    run = tmp_path / "run"
    # begun with the FP32 model (as a GPU host picks it); a CPU host's default would be the INT8 variant
    assert segment([src], run, model="unet-small", options=SegmentOptions(progress=False)).frames == 2
    for p in frames[2:]:
        (src / p.name).write_bytes(p.read_bytes())
    res = segment([src], run, options=SegmentOptions(progress=False))  # no --model: the run's own
    assert res.frames == 2 and _images(run).height == 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == load_model_info("unet-small").sha256


def test_retry_errors(screen, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    good = sorted(screen.images.rglob("*.tif"))[0]
    (src / good.name).write_bytes(b"truncated")
    run = tmp_path / "run"
    assert segment([src], run, options=SegmentOptions(progress=False)).failed == 1
    assert segment([src], run, options=SegmentOptions(progress=False)).frames == 0  # errors are not retried...
    (src / good.name).write_bytes(good.read_bytes())  # ...until asked, e.g. after the file was copied again
    res = segment([src], run, options=SegmentOptions(progress=False, retry_errors=True))
    assert res.frames == 1 and res.failed == 0
    assert _images(run).height == 1 and not (run / "errors").exists()


def test_quality_columns(screen, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for p in sorted(screen.images.rglob("*.tif"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    segment([src], tmp_path / "run", options=SegmentOptions(progress=False))
    df = _images(tmp_path / "run")
    assert (df["ImageQuality_FocusScore_DNA"] > 0).all() and (df["ImageQuality_PercentMaximal_DNA"] > 0).all()


def test_c01_screen_segments_like_tif(tmp_path):
    tif = simulate_screen(tmp_path / "tif", plates=1, fields=1, size=96, seed=4, masks=False)
    c01 = simulate_screen(tmp_path / "c01", plates=1, fields=1, size=96, seed=4, masks=False, fmt="c01")
    a = _images(segment([tif.images], tmp_path / "ra", options=SegmentOptions(progress=False)).run)
    b = _images(segment([c01.images], tmp_path / "rb", options=SegmentOptions(progress=False)).run)
    cols = ["Metadata_Well", "Count_Nuclei", "Total_Nuclei_AreaShape_Area"]
    assert a.sort("Metadata_Well").select(cols).equals(b.sort("Metadata_Well").select(cols))


def test_pixel_size_rescales_to_the_model(tmp_path):
    """A frame imaged at twice the magnification (half the pixel size) gives the same nuclei count."""
    from nucleiscreen.kernels.contrast import INNER, OUTER
    from nucleiscreen.kernels.resize import resize

    img, _ = synth_frame(np.random.default_rng(7), (384, 384))
    big = np.clip(resize(img, (768, 768)), 0, 65535).astype(np.uint16)
    base = Segmenter()
    fine = Segmenter(pixel_size=base.info.card["pixel_size_um"] / 2)
    (c1,) = base.classes([base.prepare(img)], img.shape)
    (c2,) = fine.classes([fine.prepare(big)], big.shape)
    n1 = int(base.instances(c1, img).max())
    n2 = int(fine.instances(c2, big).max())
    assert c2.shape == (768, 768) and abs(n1 - n2) <= max(1, 0.1 * n1)
    # the card's lengths and areas are in model pixels: twice as many frame pixels per nucleus here
    assert fine.post.max_grow == 2 * base.post.max_grow
    assert fine.post.contrast_area == 4 * base.post.contrast_area and fine.post.ring == (2 * INNER, 2 * OUTER)
    assert fine.post.min_edge_area == 4 * base.post.min_edge_area
    assert fine.post.grow_area == 4 * base.post.grow_area
    a1 = (base.instances(c1, img) > 0).sum()
    a2 = (fine.instances(c2, big) > 0).sum()
    assert abs(a2 / (4 * a1) - 1) < 0.1
    assert fine.prepare(big).shape == img.shape  # the network sees the frame at its own pixel size
    with pytest.raises(UserError, match="positive"):
        Segmenter(pixel_size=-1.0)


def test_parts_are_flushed_as_frames_accumulate(screen, tmp_path):
    run = tmp_path / "run"
    segment([screen.images], run, options=SegmentOptions(progress=False, part_frames=100, objects=True))
    images = sorted((run / "images").rglob("part-*.parquet"))
    objects = sorted((run / "objects").rglob("part-*.parquet"))
    assert len(images) == 4 and len(objects) >= 4  # 384 frames in parts of at most 100
    df = _images(run)
    assert df.height == 384 and df["ImageNumber"].n_unique() == 384
    obj = pl.read_parquet(objects, hive_partitioning=False)
    assert obj.height == int((df["Count_Nuclei"] + df["Count_Micronuclei"]).sum())


def test_shards_fill_one_run_folder(screen, tmp_path):
    from nucleiscreen.engine.pipeline import parse_shard

    run = tmp_path / "run"
    a = segment([screen.images], run, options=SegmentOptions(progress=False, shard=(0, 3)))
    b = segment([screen.images], run, options=SegmentOptions(progress=False, shard=(2, 3)))
    c = segment([screen.images], run, options=SegmentOptions(progress=False, shard=parse_shard(
        "slurm", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"})))
    assert a.frames == b.frames == c.frames == 128
    df = _images(run)
    assert df.height == 384 and sorted(df["ImageNumber"]) == list(range(1, 385))
    assert segment([screen.images], run, options=SegmentOptions(progress=False, shard=(1, 3))).frames == 0
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(UserError):
            parse_shard(bad, {})
    with pytest.raises(UserError, match="SLURM_ARRAY_TASK_ID"):
        parse_shard("slurm", {})


@pytest.mark.parametrize("fmt", ["tif", "c01"])
def test_killed_run_resumes_to_one_row_per_frame_and_counts_match_truth(tmp_path, fmt):
    """A two-plate screen; the segment process is killed (SIGKILL) once parts are on disk, then re-run."""
    import subprocess
    import sys
    import time

    from nucleiscreen.engine.readers import read_frame

    sim = simulate_screen(tmp_path / "sim", plates=2, fields=1, size=96, seed=5, masks=True, fmt=fmt)
    run = tmp_path / "run"
    child = ("import sys; from nucleiscreen.engine.pipeline import SegmentOptions; "
             "from nucleiscreen.engine.run import segment; "
             "segment([sys.argv[1]], sys.argv[2], "
             "options=SegmentOptions(progress=False, part_frames=32, batch_size=4))")
    proc = subprocess.Popen([sys.executable, "-c", child, str(sim.images), str(run)])
    deadline = time.time() + 120
    while not list((run / "images").rglob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    first = _images(run).height if (run / "images").is_dir() else 0
    res = segment([sim.images], run, options=SegmentOptions(progress=False))
    df = _images(run)
    assert df.height == 768 and df["FileName_DNA"].n_unique() == 768 and df["ImageNumber"].n_unique() == 768
    assert res.skipped == first and 0 < first < 768, (first, res.skipped)  # the kill came mid-run
    # Nuclei (objects of >= 100 px, the default micronucleus cut-off) against the simulator's masks, within the
    # model's error on simulated frames (tests/test_model.py).
    truth = sum(int((np.bincount(read_frame(p).ravel())[1:] >= 100).sum()) for p in sorted(sim.masks.rglob("*.tif")))
    found = int(df["Count_Nuclei"].sum())
    assert abs(found - truth) <= 0.1 * truth, (found, truth)


class _AsyncBackend(SyncBackend):
    """Wraps a real backend with submit/collect as the TensorRT backend has them (two slots: at most two batches in
    flight), logs the calls, and fails the submit of batch number ``fail_at``."""

    asynchronous = True

    def __init__(self, inner, log, fail_at=None):
        self.inner, self.log, self.results, self.fail_at, self.submits = inner, log, {}, fail_at, 0
        self.preferred_batch, self.description, self.name = 4, "async test backend", "async"

    def submit(self, batch):
        self.submits += 1
        if self.submits == self.fail_at:
            raise RuntimeError("simulated device error")
        assert len(self.results) < 2, "a third batch submitted while two are in flight"
        token = len(self.log)
        self.log.append(("submit", token, batch.shape[-2:]))
        self.results[token] = self.inner.infer(batch)
        return token

    def collect(self, token):
        self.log.append(("collect", token))
        return self.results.pop(token)

    def infer(self, batch):
        return self.collect(self.submit(batch))


def test_asynchronous_backend_overlaps_batches(tmp_path, monkeypatch):
    """With submit/collect, batch k+1 is submitted before batch k is collected (the GPU path's overlap), a frame
    size change drains the batch in flight first, and the results equal the synchronous path's."""
    import nucleiscreen.engine.run as run
    import nucleiscreen.engine.segmenter as segmenter

    monkeypatch.setattr(run, "plate_shapes", lambda frames, channel: {})  # sizes mixed in one plate on purpose
    sim = simulate_screen(tmp_path / "sim", plates=1, fields=1, size=96, seed=6, masks=False)
    big = sorted(sim.images.rglob("*.tif"))[:6]
    for p in big:  # a few frames of another size: their own batches
        tifffile.imwrite(p, np.pad(tifffile.imread(p), ((0, 32), (0, 32)), mode="reflect"))
    ref = _images(segment([sim.images], tmp_path / "sync", options=SegmentOptions(progress=False, batch_size=4)).run)
    log = []
    real = segmenter.create_backend
    monkeypatch.setattr(segmenter, "create_backend", lambda *a, **k: _AsyncBackend(real(*a, **k), log, fail_at=10))
    res = segment([sim.images], tmp_path / "async", options=SegmentOptions(progress=False, batch_size=4))
    got = _images(res.run)
    cols = ["FileName_DNA", "Count_Nuclei", "Count_Micronuclei", "Total_Nuclei_AreaShape_Area"]
    # the 4 frames of the failed batch are error rows; every other frame equals the synchronous result
    assert res.failed == 4 and got.height == 380
    assert got.sort("FileName_DNA").select(cols).equals(
        ref.filter(pl.col("FileName_DNA").is_in(got["FileName_DNA"].to_list())).sort("FileName_DNA").select(cols))
    submits = [e for e in log if e[0] == "submit"]
    assert len(submits) == len([e for e in log if e[0] == "collect"]) >= 95
    # batch k is collected only after batch k+1 was submitted (except at a frame-size change and at the end)
    overlapped = sum(1 for i, e in enumerate(log) if e[0] == "collect"
                     and any(f[0] == "submit" and f[1] > e[1] for f in log[:i]))
    assert overlapped >= len(submits) - 3, (overlapped, len(submits))
    in_flight = None
    for event in log:  # never two frame sizes in flight at once
        if event[0] == "submit":
            assert in_flight is None or in_flight[2] == event[2]
            in_flight = event
        else:
            in_flight = None if in_flight and in_flight[1] == event[1] else in_flight


def test_parts_are_written_every_checkpoint_seconds(screen, tmp_path):
    """With --checkpoint-seconds 0 every frame's rows go to disk at once (a kill loses nothing finished); the tables
    are those of a run with the default."""
    run = tmp_path / "run"
    segment([screen.images], run, options=SegmentOptions(progress=False, checkpoint_seconds=0, objects=True))
    parts = list((run / "images").rglob("part-*.parquet"))
    assert len(parts) >= 300  # 384 frames, about one part each (a frame finished with its batch: several at once)
    ref = tmp_path / "ref"
    segment([screen.images], ref, options=SegmentOptions(progress=False, objects=True))
    assert _images(run).sort("ImageNumber").equals(_images(ref).sort("ImageNumber"))
    with pytest.raises(UserError, match="checkpoint-seconds"):
        segment([screen.images], tmp_path / "bad", options=SegmentOptions(progress=False, checkpoint_seconds=-1))


def test_objects_commit_with_their_image_rows_and_orphans_are_ignored_then_removed(screen, tmp_path):
    """A plate's object part and image part share one name (objects first); an object part without its image part
    (a writer killed between the two) is ignored by analyze and removed by the next segment."""
    import shutil

    from nucleiscreen.engine.runfolder import object_parts

    run = tmp_path / "run"
    segment([screen.images], run, options=SegmentOptions(progress=False, objects=True, part_frames=100))
    parts = sorted((run / "objects").rglob("part-*.parquet"))
    assert parts and object_parts(run) == parts
    orphan = parts[0].with_name("part-deadbeef-00001.parquet")
    shutil.copy(parts[0], orphan)
    assert orphan not in object_parts(run)
    res = segment([screen.images], run, options=SegmentOptions(progress=False, objects=True, part_frames=100))
    assert res.frames == 0 and not orphan.exists() and object_parts(run) == parts


def test_a_second_run_of_the_same_shard_is_refused_and_a_stale_lock_taken_over(screen, tmp_path, capsys):
    import json
    import os
    import socket

    run = tmp_path / "run"
    lock = run / ".locks" / "all.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "x",
                                "started": "2026-01-01T00:00:00+00:00"}))  # this process: alive
    with pytest.raises(UserError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        segment([screen.images], run, options=SegmentOptions(progress=False))
    # another shard of the same folder is not held by it
    assert segment([screen.images], run, options=SegmentOptions(progress=False, shard=(0, 8))).frames == 48
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345, "token": "y"}))  # no such pid
    assert segment([screen.images], run, options=SegmentOptions(progress=False)).frames == 384 - 48
    assert "taking over the lock" in capsys.readouterr().err and not lock.exists()


def test_a_run_killed_after_checkpoints_does_not_recompute_what_they_wrote(tmp_path):
    """--checkpoint-seconds bounds the loss of a kill: the frames of the parts written before it are skipped on
    resume (not segmented again), and the tables end with one row per frame."""
    import signal
    import subprocess
    import sys
    import time

    sim = simulate_screen(tmp_path / "sim", plates=2, fields=1, size=96, seed=7, masks=False)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nucleiscreen", "--quiet", "segment", str(sim.images), "--out",
                             str(run), "--checkpoint-seconds", "0.3", "--batch-size", "4"])
    deadline = time.time() + 120
    while len(list((run / "images").rglob("part-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = set(_images(run)["ImageNumber"].to_list())
    assert len(list((run / "images").rglob("part-*.parquet"))) >= 2 and 0 < len(written) < 768
    res = segment([sim.images], run, options=SegmentOptions(progress=False))
    assert res.skipped == len(written) and res.frames == 768 - len(written)  # the checkpointed frames were not redone
    df = _images(run)
    assert df.height == 768 and df["ImageNumber"].n_unique() == 768
