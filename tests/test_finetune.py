"""train --finetune: a shipped model fine-tuned for a few steps on a tiny annotated folder (Cellpose's layout) is a
model that predict runs; bad annotation folders are one line each."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucleiscreen.cli import main
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.trainer.finetune import find_annotations

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aitslab-bioimaging1" / "val"


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """Three 192^2 crops of the lab's validation frames, each beside its <name>_masks.tif (Cellpose's layout)."""
    paths = sorted((VAL / "images").glob("*.png"))[:3]
    if not paths:
        pytest.skip("the lab's validation frames are not in ../shared/data")
    root = tmp_path_factory.mktemp("annotated")
    for p in paths:
        tifffile.imwrite(root / f"{p.stem}.tif", read_frame(p)[400:592, 400:592])
        tifffile.imwrite(root / f"{p.stem}_masks.tif", read_frame(VAL / "masks" / f"{p.stem}.tif")[400:592, 400:592])
    return root


def test_finetune_writes_a_model_that_predict_runs(annotated, tmp_path, capsys):
    out = tmp_path / "mine.onnx"
    assert main(["--quiet", "train", "--finetune", str(annotated), "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "starting model: F1@0.5" in printed and "fine-tuned: F1@0.5" in printed and str(out) in printed
    card = load_model_info(out).card
    shipped = load_model_info().card
    assert card["training_data"]["steps"] == 2 and len(card["training_data"]["held_out"]) == 1
    assert card["training_data"]["finetuned_from"]["sha256"] == load_model_info().sha256
    assert card["nucleus_area_px"] > 0 and set(card["postprocessing"]) == set(shipped["postprocessing"])
    pred = tmp_path / "pred"
    images = [str(p) for p in sorted(annotated.glob("*.tif")) if not p.stem.endswith("_masks")]
    assert main(["--quiet", "predict", *images, "--model", str(out), "--out", str(pred)]) == 0
    labels = sorted(pred.glob("*_labels.tif"))
    assert len(labels) == 3 and all(tifffile.imread(p).max() > 0 for p in labels)


def _one_line(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and pattern in err, err


def test_bad_annotation_folders_are_one_line(annotated, tmp_path, capsys):
    pairs = find_annotations(annotated)
    assert [m.name for _, m in pairs] == sorted(p.name for p in annotated.glob("*_masks.tif"))
    out = ["--out", str(tmp_path / "m.onnx"), "--steps", "1"]
    _one_line(capsys, ["train", "--finetune", str(tmp_path / "nope"), *out], "not found")
    lone = tmp_path / "lone"
    lone.mkdir()
    tifffile.imwrite(lone / "a.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(lone / "b.tif", np.zeros((64, 64), np.uint16))
    _one_line(capsys, ["train", "--finetune", str(lone), *out], "2 image(s) without a mask, e.g. a.tif")
    (lone / "images").mkdir()
    (lone / "masks").mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(lone / "images" / f"{name}.tif", np.ones((64, 64), np.uint16))
    tifffile.imwrite(lone / "masks" / "a.tif", np.ones((64, 64), np.uint16))
    tifffile.imwrite(lone / "masks" / "b.tif", np.ones((32, 64), np.uint16))
    _one_line(capsys, ["train", "--finetune", str(lone), *out], "but its mask b.tif is 64x32")
    tifffile.imwrite(lone / "masks" / "b.tif", np.zeros((64, 64), np.uint16))
    _one_line(capsys, ["train", "--finetune", str(lone), *out], "an empty mask")
    _one_line(capsys, ["train", "--finetune", str(annotated), "--out", str(tmp_path / "m.txt")], ".onnx")
