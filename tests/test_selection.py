"""Model selection (#4): the small-object loss weight, the HoVer-style model, the classic baseline and the sweep."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from nucleiscreen.cli import main  # noqa: E402
from nucleiscreen.engine.model import load_model_info  # noqa: E402
from nucleiscreen.engine.readers import read_frame  # noqa: E402
from nucleiscreen.errors import UserError  # noqa: E402
from nucleiscreen.kernels.targets import classes_from_instances  # noqa: E402
from nucleiscreen.network import UNetConfig  # noqa: E402
from nucleiscreen.trainer.baseline import otsu_level, segment_classic  # noqa: E402
from nucleiscreen.trainer.calibrate import (  # noqa: E402
    AREA_CHOICES,
    BIAS_CHOICES,
    CONTRAST_CHOICES,
    EDGE_CHOICES,
    GROW_AREA_CHOICES,
    GROW_LEVEL_CHOICES,
)
from nucleiscreen.trainer.config import TrainConfig  # noqa: E402
from nucleiscreen.trainer.data import small_interior  # noqa: E402
from nucleiscreen.trainer.export import export_onnx  # noqa: E402
from nucleiscreen.trainer.hover import HoVerNet, hover_instances, hv_maps  # noqa: E402
from nucleiscreen.trainer.metrics import match  # noqa: E402
from nucleiscreen.trainer.sweep import load_sweep, run_config  # noqa: E402
from nucleiscreen.trainer.train import loss_fn, train  # noqa: E402


def _disks(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def test_small_interior_marks_only_seeds_of_small_objects():
    labels = np.zeros((40, 40), np.int32)
    labels[2:32, 2:32] = 1  # 900 px nucleus
    labels[34:39, 34:39] = 2  # 25 px micronucleus
    classes = classes_from_instances(labels)
    small = small_interior(labels, classes, 100)
    assert small.any() and not small[labels == 1].any()
    assert np.array_equal(small, (labels == 2) & (classes == 1))


def test_loss_small_weight_is_a_weighted_mean():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(1, 3, 6, 6)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 3, (1, 6, 6)))
    small = target == 1
    small[0, :3] = False
    w = torch.tensor([1.0, 1.0, 10.0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    pw = w[target].clone()
    pw[small] = 7.0
    expected = (ce * pw).sum() / pw.sum()
    assert torch.allclose(loss_fn(logits, target, w, 0.0, small, 7.0), expected)
    # without small-object weighting it is PyTorch's class-weighted cross-entropy
    assert torch.allclose(loss_fn(logits, target, w, 0.0), torch.nn.functional.cross_entropy(logits, target, weight=w))


def test_hv_maps_by_hand():
    labels = np.zeros((7, 9), np.int32)
    labels[1:4, 2:7] = 1  # 3 x 5 box: centroid (2, 4)
    hv = hv_maps(labels)
    assert hv.shape == (2, 7, 9) and hv.dtype == np.float32
    np.testing.assert_allclose(hv[0, 2, 2:7], [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(hv[1, 1:4, 4], [-1.0, 0.0, 1.0])
    assert not hv[:, labels == 0].any()


def test_hover_shapes_and_postprocessing_separates_touching_nuclei():
    net = HoVerNet(UNetConfig(depth=2, base=4)).eval()
    assert net(torch.zeros(1, 1, 32, 48)).shape == (1, 4, 32, 48)
    truth = _disks((80, 120), [(40, 30), (40, 52), (40, 95)], 12)  # the first two touch
    truth[10:14, 100:104] = 4  # a 16-px micronucleus
    fg = truth > 0
    out = np.concatenate([np.stack([np.where(fg, -4.0, 4.0), np.where(fg, 4.0, -4.0)]), hv_maps(truth)])
    pred = hover_instances(out.astype(np.float32))
    assert match(truth, pred).summary()["f1"]["0.80"] == 1.0


def test_otsu_level_matches_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.2, 0.05, 5000), rng.normal(0.7, 0.08, 2000)]).astype(np.float32)
    bin_width = (values.max() - values.min()) / 256
    assert abs(otsu_level(values) - threshold_otsu(values, nbins=256)) <= bin_width


def test_classic_baseline_on_a_real_frame(aits):
    image = next((aits / "val" / "images").iterdir())
    truth = read_frame(aits / "val" / "masks" / f"{image.stem}.tif")
    pred = segment_classic(read_frame(image))
    s = match(truth, pred).summary()
    assert pred.dtype == np.int32 and s["f1"]["0.50"] > 0.7, s
    assert not segment_classic(np.full((64, 64), 300, np.uint16)).any()


def test_init_checkpoint_must_match_the_architecture(tiny_run, tmp_path):
    tmp, cfg = tiny_run
    other = {**cfg, "out": str(tmp_path / "ft"), "init": str(tmp / "run" / "best.pt"), "steps": 1}
    train(TrainConfig.from_dict(other), progress=False)  # same network: fine-tunes
    with pytest.raises(UserError, match="init checkpoint"):
        train(TrainConfig.from_dict({**other, "arch": "hover", "out": str(tmp_path / "h")}), progress=False)
    with pytest.raises(UserError, match="unknown arch"):
        TrainConfig.from_dict({"arch": "resnet"})
    for bad, message in (({"model": {"depht": 4}}, "depht"), ({"model": {"scale": 0.25}}, "scale"),
                         ({"train": [{"path": "x", "wieght": 2}]}, "wieght"),
                         ({"arch": "hover", "model": {"scale": 0.5}}, "full resolution")):
        with pytest.raises(UserError, match=message):
            TrainConfig.from_dict(bad)


def test_sweep_trains_scores_and_selects(tiny_run, tmp_path, capsys):
    tmp, cfg = tiny_run
    base = {k: v for k, v in cfg.items() if k != "out"}
    spec = {"out": str(tmp_path / "sweep"), "base": base,
            "runs": {"unet-a": {}, "unet-b": {"model": {"base": 2}}, "hover": {"arch": "hover"}},
            "compare": {"earlier": str(tmp / "run" / "best.pt"), "gone": str(tmp_path / "nope.pt")}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec))
    assert main(["train", "--sweep", str(path), "--quiet"]) in (0, None)
    out = tmp_path / "sweep"
    table = (out / "sweep.md").read_text()
    for name in ("unet-a", "unet-b", "hover", "earlier", "classic baseline", "(winner)"):
        assert name in table
    data = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["unet-a", "unet-b", "hover", "earlier", "classic baseline"]
    assert "gone: " in capsys.readouterr().out  # a missing compare checkpoint is left out with a note
    assert data["winner"] in ("unet-a", "unet-b", "hover", "earlier") and (out / "winner.pt").is_file()
    assert torch.load(out / "unet-b" / "best.pt", weights_only=False)["config"]["model"]["base"] == 2
    # re-running the same command only re-scores: every run is complete, nothing trains again
    mtime = (out / "unet-a" / "last.pt").stat().st_mtime
    log = (out / "unet-a" / "log.csv").read_text()
    assert main(["train", "--sweep", str(path), "--quiet"]) in (0, None)
    assert (out / "unet-a" / "last.pt").stat().st_mtime == mtime and (out / "unet-a" / "log.csv").read_text() == log
    assert main(["train", "--sweep", str(path), "--steps", "9"]) == 2  # options of one training are refused


@pytest.mark.parametrize("spec,message", [
    ({"runs": {}}, "'runs' must map"),
    ({"runs": {"a": {}}, "base": {}}, "validation folder"),
    ({"runs": {"a": {}}, "base": {"val": "v"}, "colour": 1}, "unknown sweep key"),
    ({"runs": {"a": {}}, "base": {"val": "v"}, "select_by": "speed"}, "select_by"),
    ({"runs": {"a": None}, "base": {"val": "v"}}, "'runs' must map"),
    ({"runs": {"a": {}}, "base": {"val": "v"}, "compare": ["x"]}, "'compare'"),
])
def test_bad_sweep_files(tmp_path, spec, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(UserError, match=message):
        load_sweep(path)


def test_train_needs_exactly_one_of_config_and_sweep(capsys):
    assert main(["train"]) == 2
    assert "either --config" in capsys.readouterr().err


def test_evaluate_reports_the_baseline(aits, tmp_path, capsys):
    import tifffile

    truth, images, pred = tmp_path / "truth", tmp_path / "images", tmp_path / "pred"
    for d in (truth, images, pred):
        d.mkdir()
    for p in sorted((aits / "val" / "images").iterdir())[:2]:
        mask = read_frame(aits / "val" / "masks" / f"{p.stem}.tif")
        tifffile.imwrite(truth / f"{p.stem}.tif", mask)
        tifffile.imwrite(pred / f"{p.stem}_labels.tif", mask)
        tifffile.imwrite(images / f"{p.stem}.tif", read_frame(p))
    js = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--images", str(images),
                 "--json", str(js)]) in (0, None)
    report = json.loads(js.read_text())
    assert report["summary"]["f1"]["0.90"] == 1.0
    assert 0.6 < report["baseline"]["summary"]["f1"]["0.50"] < 1.0
    assert "classic baseline" in capsys.readouterr().out


def test_export_tensorrt_option(tiny_run, tmp_path, capsys):
    tmp, _ = tiny_run
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp / "run" / "best.pt"), "--out", str(out), "--tensorrt", "big"]) == 2
    assert "HxW" in capsys.readouterr().err and not out.exists()
    from nucleiscreen.engine.backends import tensorrt

    if tensorrt.available():
        pytest.skip("TensorRT present: the plan build is exercised by tests/test_tensorrt.py")
    assert main(["export", str(tmp / "run" / "best.pt"), "--out", str(out), "--tensorrt", "100x60"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "tensorrt" in err.lower() and "Traceback" not in err
    assert out.is_file()  # the ONNX export is kept


def test_training_calibrates_the_postprocessing_on_training_images(tiny_run, tmp_path):
    tmp, _ = tiny_run
    ck = torch.load(tmp / "run" / "best.pt", weights_only=False)
    post = ck["postprocessing"]
    assert post["max_grow"] in post["f1_mean_by_max_grow"] and post["images"] >= 1
    for key, scores in (("boundary_bias", post["f1_mean_by_boundary_bias"]), ("max_grow", post["f1_mean_by_max_grow"])):
        assert scores[post[key]] == max(scores.values())
    detection = post["f1_0.50_by_min_contrast_and_area"]  # min_contrast and min_area are chosen together
    assert set(detection) == set(CONTRAST_CHOICES) and all(set(row) == set(AREA_CHOICES) for row in detection.values())
    assert detection[post["min_contrast"]][post["min_area"]] == max(max(row.values()) for row in detection.values())
    assert set(post["f1_mean_by_boundary_bias"]) == set(BIAS_CHOICES)
    edge = post["f1_0.50_by_min_edge_area"]  # chosen last, with the others fixed
    assert set(edge) == set(EDGE_CHOICES) and edge[post["min_edge_area"]] == max(edge.values())
    assert edge[0] == detection[post["min_contrast"]][post["min_area"]]  # 0: no edge limit
    growth = post["f1_mean_by_grow_area_and_level"]  # chosen last by F1 mean, against no growth
    assert set(growth) == set(GROW_AREA_CHOICES[1:]) and all(set(r) == set(GROW_LEVEL_CHOICES) for r in growth.values())
    best = max(post["f1_mean_without_growth"], *(max(r.values()) for r in growth.values()))
    chosen = post["f1_mean_without_growth"] if post["grow_area"] == 0 else growth[post["grow_area"]][post["grow_level"]]
    assert chosen == best
    assert ck["val"]["f1_mean"] >= 0  # the card's figures: validated with the calibrated post-processing
    # the card carries what the engine must apply
    ck["postprocessing"].update(min_contrast=0.15, min_area=20, min_edge_area=35, grow_area=100, grow_level=0.7)
    torch.save(ck, tmp_path / "best.pt")
    card = load_model_info(export_onnx(tmp_path / "best.pt", tmp_path / "m.onnx")).postprocessing
    assert card["min_contrast"] == 0.15 and card["min_area"] == 20 and card["contrast_area"] == 300
    assert card["min_edge_area"] == 35 and card["grow_area"] == 100 and card["grow_level"] == 0.7


def test_the_shipped_training_configs_are_valid():
    """Every configuration the README names (trainer/configs, in the package) and every experiment's
    (docs/experiments) is a valid training or sweep file, and each config that starts from checkpoints (a stage 2,
    the weight average) starts from other configs' outputs."""
    root = Path(__file__).resolve().parents[1]
    configs = {}
    files = [*(root / "trainer" / "configs").glob("*.json"), *(root / "docs" / "experiments").glob("*.json")]
    for path in sorted(files):
        data = json.loads(path.read_text())
        if "runs" in data:
            spec = load_sweep(path)
            for name in spec["runs"]:
                run_config(spec, name)
        else:
            configs[path.name] = TrainConfig.from_dict(data)
    outs = {str(Path(c.out) / "best.pt") for c in configs.values()}
    outs |= {str(Path(c.out) / f"step{k}.pt") for c in configs.values() if c.keep_checkpoints
             for k in range(c.val_every, c.steps + 1, c.val_every)}
    assert {"unet-small-deform.json", "unet-refine-deform.json", "unet-soup.json"} <= set(configs)
    shipped = {p.name for p in (root / "trainer" / "configs").glob("*")}
    assert shipped == {"sweep.json", "unet-small-deform.json", "unet-refine-deform.json", "unet-refine-deform-b.json",
                       "unet-soup.json", "unet-tiny.json", "unet-tiny-soup.json"}
    # the recipes of the shipped models; logs and other runs stay out of the wheel
    inits = [i for c in configs.values() if c.init and not c.onnx_init
             for i in ([c.init] if isinstance(c.init, str) else c.init)]
    assert inits and all(i in outs for i in inits)
