import numpy as np
import pytest
import tifffile

from nucleiscreen.errors import UserError
from nucleiscreen.trainer.evaluate import evaluate_folders, format_report
from nucleiscreen.trainer.metrics import match


def _square(img, k, y, x, s):
    img[y:y + s, x:x + s] = k


def test_hand_computed_matching():
    truth = np.zeros((50, 50), np.int32)
    pred = np.zeros((50, 50), np.int32)
    _square(truth, 1, 0, 0, 10)   # 100 px
    _square(pred, 5, 0, 0, 10)    # identical -> IoU 1
    _square(truth, 2, 20, 20, 10)
    _square(pred, 9, 20, 22, 10)  # shifted by 2: inter 80, union 120 -> IoU 2/3
    _square(truth, 3, 40, 0, 5)   # missed -> FN
    _square(pred, 11, 40, 40, 5)  # spurious -> FP
    c = match(truth, pred)
    assert c.n_true == 3 and c.n_pred == 3
    assert c.tp[0.5] == 2 and c.tp[0.65] == 2 and c.tp[0.7] == 1
    s = c.summary()
    assert s["f1"]["0.50"] == pytest.approx(2 * 2 / 6, abs=1e-4)
    assert s["f1"]["0.70"] == pytest.approx(2 * 1 / 6, abs=1e-4)
    assert s["mean_matched_iou"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    assert s["jaccard_lab"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-4)
    assert s["pixel_jaccard"] == pytest.approx((100 + 80) / (100 + 120 + 25 + 25), abs=1e-4)
    # by size: the two 100 px truths are matched, the 25 px one is not; the 25 px prediction is spurious
    assert s["by_size"]["100-300"] == {"true": 2, "recall_0.5": 1.0, "pred": 2, "precision_0.5": 1.0}
    assert s["by_size"]["25-50"] == {"true": 1, "recall_0.5": 0.0, "pred": 1, "precision_0.5": 0.0}
    assert s["by_size"]["<25"] == {"true": 0, "recall_0.5": None, "pred": 0, "precision_0.5": None}
    pooled = match(truth, pred).add(c).summary()["by_size"]["25-50"]
    assert pooled["true"] == 2 and pooled["recall_0.5"] == 0.0


def test_splits_and_merges():
    truth = np.zeros((20, 40), np.int32)
    _square(truth, 1, 0, 0, 20)
    pred = np.zeros_like(truth)
    pred[:, :10], pred[:, 10:20] = 1, 2  # one truth split in two
    pred[:, 20:40] = 3
    truth[:, 20:30], truth[:, 30:40] = 2, 3  # one prediction merging two truths
    c = match(truth, pred)
    assert c.splits == 1 and c.merges == 1


def test_empty_images():
    z = np.zeros((8, 8), np.int32)
    assert match(z, z).summary()["f1"]["0.50"] == 1.0
    one = z.copy()
    one[2:5, 2:5] = 1
    assert match(one, z).summary()["f1"]["0.50"] == 0.0


def test_evaluate_folders(tmp_path):
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    t = np.zeros((30, 30), np.uint16)
    _square(t, 1, 0, 0, 10)
    _square(t, 2, 15, 15, 10)
    tifffile.imwrite(tmp_path / "truth" / "a.tif", t)
    tifffile.imwrite(tmp_path / "pred" / "a_labels.tif", t * 3)
    tifffile.imwrite(tmp_path / "pred" / "orphan_labels.tif", t)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "truth")
    assert report["pairs"] == 1 and report["summary"]["f1"]["0.95"] == 1.0
    assert report["unpaired"] == ["orphan"]
    text = format_report(report)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()}
    assert "F1" in rows and rows["recall"] == ["-", "-", "-", "1.00/2", "-", "-"]
    with pytest.raises(UserError, match="no pairs"):
        evaluate_folders(tmp_path / "truth", tmp_path / "truth")
    with pytest.raises(UserError, match="not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "truth")
