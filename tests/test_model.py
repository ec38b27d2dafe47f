"""The shipped U-Net: its card, and its accuracy on the seed lab's validation frames and on simulated ones."""

import numpy as np
import pytest

from nucleiscreen.engine.model import default_model_path, load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.simulate import synth_frame
from nucleiscreen.trainer.metrics import Counts, match


@pytest.fixture(scope="module")
def seg():
    return Segmenter()


def test_card_describes_the_model():
    info = load_model_info()
    assert info.path == default_model_path() and len(info.sha256) == 64
    card = info.card
    assert card["classes"] == ["background", "interior", "boundary"]
    assert card["input"]["dtype"] == "float32" and info.multiple == 32  # depth 4 at half resolution
    assert card["normalization"]["method"] == "percentile"
    post = card["postprocessing"]  # calibrated on the training frames
    assert 1 <= post["max_grow"] <= 8 and post["boundary_bias"] < 0 and 4 <= post["min_area"] <= 30
    assert 0 <= post["min_edge_area"] <= 80 and 0 <= post["grow_area"] <= 300 and 0 < post["grow_level"] < 1
    assert card["validation_metrics"]["f1"]["0.50"] > 0.9


def test_f1_on_the_labs_validation_frames(seg, aits):
    counts = Counts()
    for path in sorted((aits / "val" / "images").glob("*.png")):
        truth = read_frame(aits / "val" / "masks" / (path.stem + ".tif"))
        raw = read_frame(path)
        (classes,) = seg.classes([seg.prepare(raw)])
        counts.add(match(truth, seg.instances(classes, raw)))
    s = counts.summary()
    # The card's figure was measured by the trainer on the same 10 frames with torch; onnxruntime must agree.
    assert s["f1"]["0.50"] == pytest.approx(load_model_info().card["validation_metrics"]["f1"]["0.50"], abs=0.01)
    # the trainer issue's targets for the bundled model on the lab's validation frames
    assert s["f1"]["0.50"] >= 0.92 and s["f1"]["0.70"] >= 0.85 and s["f1"]["0.90"] >= 0.65
    assert s["pixel_jaccard"] >= 0.90


def test_counts_on_simulated_frames(seg):
    found, true = 0, 0
    for i in range(4):
        img, lab = synth_frame(np.random.default_rng(100 + i), (512, 512))
        (classes,) = seg.classes([seg.prepare(img)])
        pred = seg.instances(classes, img)
        found += int((np.bincount(pred.ravel())[1:] >= 100).sum())
        true += int((np.bincount(lab.ravel())[1:] >= 100).sum())
    assert abs(found - true) <= 0.1 * true
