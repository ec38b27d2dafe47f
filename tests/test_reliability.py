"""Bad frames, bad configuration and a full disk: each is one clear line (a row of the error table, or the one-line
error of the CLI), the run goes on or stops cleanly, and nothing is lost, doubled or half-written."""

import errno
import json
import shutil
from pathlib import Path

import onnx
import polars as pl
import pytest

from nucleiscreen.cli import main
from nucleiscreen.engine.model import CARD_KEY, default_model_path
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.faults import C01_FAULTS, TIFF_FAULTS, plant_faults
from nucleiscreen.simulate import simulate_screen


def _table(run: Path, name: str) -> pl.DataFrame:
    parts = sorted((run / name).rglob("part-*.parquet"))
    return pl.read_parquet(parts, hive_partitioning=False) if parts else pl.DataFrame()


def _small_screen(root: Path, fmt: str, keep: int) -> list[Path]:
    """One simulated plate of 64^2 frames cut down to its first ``keep`` frames (in name order)."""
    sim = simulate_screen(root, plates=1, fields=1, size=64, seed=3, masks=False, fmt=fmt)
    frames = sorted(p for p in sim.images.rglob("*") if p.is_file())
    for p in frames[keep:]:
        p.unlink()
    return frames[:keep]


@pytest.mark.parametrize(("fmt", "faults"), [("tif", TIFF_FAULTS), ("c01", C01_FAULTS)])
def test_every_bad_frame_is_isolated_with_its_stage_and_reason(tmp_path, capsys, fmt, faults):
    frames = _small_screen(tmp_path / "sim", fmt, keep=5 + 2 * len(faults))
    planted = plant_faults(frames, faults, read_frame)
    run = tmp_path / "run"
    assert main(["--quiet", "segment", str(tmp_path / "sim" / "images"), "--out", str(run)]) == 0
    errors, images = _table(run, "errors"), _table(run, "images")
    # every frame exactly once, in one table or the other
    assert sorted([*errors["FileName_DNA"], *images["FileName_DNA"]]) == sorted(p.name for p in frames)
    refused = {name: f for name, f in planted.items() if f.stage is not None}
    assert sorted(errors["FileName_DNA"]) == sorted(refused)
    for name, stage, error in errors.select("FileName_DNA", "Stage", "Error").iter_rows():
        fault = refused[name]
        assert stage == fault.stage, (fault.name, stage, error)
        assert fault.reason.lower() in error.split(name, 1)[-1].lower(), (fault.name, error)
        assert "\n" not in error and "Traceback" not in error
    segmented = images.filter(pl.col("FileName_DNA").is_in(list(set(planted) - set(refused))))
    assert segmented.height == len(planted) - len(refused)
    saturated = [n for n, f in planted.items() if f.name == "partly saturated"]
    if saturated:
        row = images.filter(pl.col("FileName_DNA") == saturated[0])
        assert row["ImageQuality_PercentMaximal_DNA"][0] >= 18  # segmented, and the QC column says why to look
    out = capsys.readouterr().out
    assert f"{len(refused)} failed" in out
    assert main(["--quiet", "segment", str(tmp_path / "sim" / "images"), "--out", str(run)]) == 0  # all done
    assert f"({len(frames)} already done" in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    by_stage = manifest["sessions"][0]["failed_by_stage"]
    assert by_stage == {s: sum(f.stage == s for f in refused.values()) for s in {f.stage for f in refused.values()}}


@pytest.mark.parametrize("where", ["parts", "labels"])
def test_a_full_disk_stops_the_run_with_one_line_and_the_rerun_resumes(tmp_path, capsys, monkeypatch, where):
    import nucleiscreen.engine.runfolder as runfolder

    frames = _small_screen(tmp_path / "sim", "tif", keep=24)
    argv = ["--quiet", "segment", str(tmp_path / "sim" / "images"), "--out", str(tmp_path / "run"),
            "--checkpoint-seconds", "0", "--batch-size", "2", "--save-labels"]
    calls = {"n": 0}

    def fill_up(real, path_arg):
        def write(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 4:  # the disk fills: half a file, then ENOSPC
                Path(args[path_arg]).write_bytes(b"half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return write

    if where == "parts":  # DataFrame.write_parquet(self, path)
        monkeypatch.setattr(pl.DataFrame, "write_parquet", fill_up(pl.DataFrame.write_parquet, 1))
    else:  # tifffile.imwrite(path, labels)
        monkeypatch.setattr(runfolder.tifffile, "imwrite", fill_up(runfolder.tifffile.imwrite, 0))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "run the same command again" in err
    run = tmp_path / "run"
    assert not list(run.rglob("*.tmp")) and not list((run / ".locks").glob("*"))
    done = _table(run, "images").height
    assert 0 < done < len(frames) if where == "parts" else done < len(frames)
    monkeypatch.undo()  # space freed
    assert main(argv) == 0
    images = _table(run, "images")
    assert images.height == len(frames) and images["FileName_DNA"].n_unique() == len(frames)
    assert _table(run, "errors").height == 0
    assert len(list((run / "labels").rglob("*_labels.tif"))) == len(frames)


def _model_with_card(path: Path, card) -> Path:
    model = onnx.load(default_model_path())
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = card if isinstance(card, str) else json.dumps(card)
    onnx.save(model, path)
    return path


def test_bad_configuration_is_one_line_each_and_writes_nothing(tmp_path, capsys):
    frames = _small_screen(tmp_path / "sim", "tif", keep=2)
    src = str(frames[0].parent)
    card = json.loads(next(p.value for p in onnx.load(default_model_path()).metadata_props if p.key == CARD_KEY))
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    no_norm = _model_with_card(tmp_path / "no-norm.onnx", {k: v for k, v in card.items() if k != "normalization"})
    two_classes = _model_with_card(tmp_path / "two.onnx", {**card, "classes": ["background", "nucleus"]})
    garbage = _model_with_card(tmp_path / "garbage.onnx", "{not json")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["--model", str(tmp_path / "missing.onnx")], "model file not found"),
        (["--model", str(not_onnx)], "not a readable ONNX model"),
        (["--model", str(no_norm)], "lacks 'normalization'"),
        (["--model", str(two_classes)], "classes"),
        (["--model", str(garbage)], "not a JSON object"),
        (["--backend", "magic"], "unknown backend"),
    ]
    for extra, pattern in cases:
        run = tmp_path / "run"
        assert main(["--quiet", "segment", src, "--out", str(run), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and pattern in err, (extra, err)
        assert not run.exists(), extra  # the model and backend are checked before the run folder is made
    for out in (a_file, a_file / "run"):
        assert main(["--quiet", "segment", src, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a file is in the way" in err, err
    assert a_file.read_text() == "x"


def test_a_lock_without_heartbeat_is_taken_over_from_any_host(tmp_path, capsys):
    import os
    import time

    frames = _small_screen(tmp_path / "sim", "tif", keep=2)
    run = tmp_path / "run"
    lock = run / ".locks" / "all.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "z", "started": "2026-01-01T00:00:00"}))
    argv = ["--quiet", "segment", str(frames[0].parent), "--out", str(run)]
    assert main(argv) == 2  # its heartbeat is fresh: another node is running it
    assert "pid 1 on another-node" in capsys.readouterr().err
    stale = time.time() - 3600
    os.utime(lock, (stale, stale))
    assert main(argv) == 0
    assert "taking over the lock" in capsys.readouterr().err and not lock.exists()
    shutil.rmtree(run)
