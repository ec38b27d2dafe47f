import subprocess
import sys

import numpy as np
import pytest
import tifffile

from nucleiscreen.cli import build_parser, main

COMMANDS = ["simulate", "train", "evaluate", "export", "quantize", "predict", "segment", "analyze", "run", "demo",
            "bench"]


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: nucleiscreen {cmd}" in out and len(out.splitlines()) > 3


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "nucleiscreen", "--help"], capture_output=True, text=True, check=True)
    assert all(cmd in out.stdout for cmd in COMMANDS)


def test_output_piped_into_a_reader_that_stops_early_is_quiet(tmp_path):
    """``nucleiscreen evaluate … | head -1``: the reader is gone before the output is written; no traceback."""
    labels = np.zeros((32, 32), np.uint16)
    labels[4:12, 4:12] = 1
    for folder, name in (("pred", "a_labels.tif"), ("truth", "a.tif")):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / name, labels)
    proc = subprocess.Popen([sys.executable, "-m", "nucleiscreen", "evaluate", "--pred", str(tmp_path / "pred"),
                             "--truth", str(tmp_path / "truth")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has imported anything
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert pattern in err, err


def test_bad_input_gives_one_line_errors(capsys, tmp_path):
    _one_line_error(capsys, ["--quiet", "segment", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "not found")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    _one_line_error(capsys, ["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], "no image files")
    (tmp_path / "odd").mkdir()
    tifffile.imwrite(tmp_path / "odd" / "holiday.tif", np.zeros((8, 8), np.uint16))
    _one_line_error(capsys, ["segment", str(tmp_path / "odd"), "--out", str(tmp_path / "r")], "holiday.tif")
    bad = tmp_path / "layout.csv"
    bad.write_bytes(b"\x00\x01garbage\xff")
    _one_line_error(capsys, ["run", str(tmp_path / "odd"), "--out", str(tmp_path / "r2"), "--layout", str(bad)],
                    "layout.csv")
    assert not (tmp_path / "r2").exists()  # the layout is checked before any segmentation
    _one_line_error(capsys, ["analyze", str(tmp_path / "r"), "--layout", str(bad)], "")
    _one_line_error(capsys, ["predict", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "p")], "not found")
    _one_line_error(capsys, ["simulate", str(tmp_path / "s"), "--plates", "0"], "plates")
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "none.json")], "not found")
    _one_line_error(capsys, ["segment", str(tmp_path / "odd"), "--out", str(tmp_path / "r"), "--backend", "magic"],
                    "unknown backend")


def test_simulate_predict_evaluate(capsys, tmp_path):
    assert main(["--quiet", "simulate", str(tmp_path / "s"), "--plates", "1", "--fields", "1", "--size", "64"]) == 0
    assert "wrote 384 frames" in capsys.readouterr().out
    imgs = tmp_path / "few"
    imgs.mkdir()
    truth = tmp_path / "truth"
    truth.mkdir()
    for i in range(2):
        img, lab = __import__("nucleiscreen.simulate", fromlist=["synth_frame"]).synth_frame(
            np.random.default_rng(i), (192, 192))
        tifffile.imwrite(imgs / f"f{i}.tif", img)
        tifffile.imwrite(truth / f"f{i}.tif", lab)
    assert main(["predict", str(imgs), "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["f0_labels.tif", "f0_nuclei.csv",
                                                                      "f1_labels.tif", "f1_nuclei.csv"]
    nuclei = (tmp_path / "pred" / "f0_nuclei.csv").read_text().splitlines()
    assert nuclei[0].startswith("ObjectNumber,AreaShape_Area") and len(nuclei) > 2
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(truth), "--json",
                 str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "2 image pair(s)" in out and (tmp_path / "e.json").exists()


def test_bench_smoke(capsys):
    assert main(["bench", "--frames", "4", "--size", "96", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "sequential reference" in out and "engine / sequential" in out
    assert main(["bench", "--frames", "2", "--size", "96", "--min-contrast", "0"]) == 0  # the filter's cost apart
    assert main(["bench", "--frames", "2", "--size", "96", "--min-contrast", "1.5"]) == 2
    assert "--min-contrast must be in [0, 1)" in capsys.readouterr().err


def test_run_segments_and_analyzes(capsys, tmp_path):
    assert main(["--quiet", "simulate", str(tmp_path / "s"), "--plates", "1", "--fields", "1", "--size", "256",
                 "--no-masks"]) == 0
    capsys.readouterr()
    assert main(["--quiet", "run", str(tmp_path / "s" / "images"), "--out", str(tmp_path / "r"), "--layout",
                 str(tmp_path / "s" / "layout.csv")]) == 0
    out = capsys.readouterr().out
    assert "pattern: cx7 (384 frames" in out and "Controls" in out and "Plates" in out
    assert {p.name for p in (tmp_path / "r" / "analysis").iterdir()} >= {
        "wells.parquet", "genes.parquet", "plates.parquet", "hits.csv", "report.html"}


def test_segment_summary_names_failed_frames_by_stage_and_fail_on_error_exits_1(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    img, _ = __import__("nucleiscreen.simulate", fromlist=["synth_frame"]).synth_frame(
        np.random.default_rng(0), (96, 96))
    tifffile.imwrite(frames / "P_A01f00d0.tif", img)
    (frames / "P_A02f00d0.tif").write_bytes(b"not a tiff")
    assert main(["--quiet", "segment", str(frames), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "(0 already done, 1 failed)" in out and "failed frames by stage: decode 1" in out
    assert main(["--quiet", "segment", str(frames), "--out", str(tmp_path / "run2"), "--fail-on-error"]) == 1


def test_predict_reports_a_bad_image_and_segments_the_others(capsys, tmp_path):
    """One unreadable image among good ones: one line for it on stderr, the others written, exit status 1."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        img, _ = __import__("nucleiscreen.simulate", fromlist=["synth_frame"]).synth_frame(
            np.random.default_rng(i), (128, 128))
        tifffile.imwrite(imgs / f"good{i}.tif", img)
    (imgs / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)  # a TIFF header and nothing behind it
    tifffile.imwrite(imgs / "blank.tif", np.zeros((64, 64), np.uint16))  # decodes, but Segmenter.load refuses it
    assert main(["--quiet", "predict", str(imgs), "--out", str(tmp_path / "p"), "--pixel-size", "model"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "broken.tif" in lines[1] and "blank.tif" in lines[0] and "Traceback" not in captured.err
    assert all(line.startswith("error: ") for line in lines)
    assert sorted(p.name for p in (tmp_path / "p").glob("*_labels.tif")) == ["good0_labels.tif", "good1_labels.tif"]
    assert "2 image(s) failed" in captured.out


def test_predict_reuses_the_scale_estimates_segmentation(tmp_path, monkeypatch):
    """With --pixel-size auto an image whose scale is kept is segmented once, by the estimate's own pass."""
    from nucleiscreen.engine.predict import predict
    from nucleiscreen.engine.segmenter import Segmenter
    from nucleiscreen.simulate import synth_frame

    img, _ = synth_frame(np.random.default_rng(5), (384, 384))
    tifffile.imwrite(tmp_path / "a.tif", img)
    calls = []
    classes = Segmenter.classes
    monkeypatch.setattr(Segmenter, "classes", lambda self, *a, **k: calls.append(self.scale) or classes(self, *a, **k))
    scales = []
    result = predict([tmp_path / "a.tif"], tmp_path / "p", pixel_size="auto", on_scale=lambda n, e: scales.append(e))
    assert len(result.written) == 1 and scales[0].scale == 1.0 and calls == [1.0]
