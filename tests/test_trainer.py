import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nucleiscreen.engine.model import load_model_info  # noqa: E402
from nucleiscreen.engine.readers import read_frame  # noqa: E402
from nucleiscreen.errors import UserError  # noqa: E402
from nucleiscreen.kernels.normalize import normalize  # noqa: E402
from nucleiscreen.kernels.targets import classes_from_instances  # noqa: E402
from nucleiscreen.network import ExportHead, UNet, UNetConfig, class_argmax, dihedral  # noqa: E402
from nucleiscreen.trainer.checkpoint import load_weights  # noqa: E402
from nucleiscreen.trainer.config import TrainConfig  # noqa: E402
from nucleiscreen.trainer.data import CropStream, Deformation, Source, deform, load_folder  # noqa: E402
from nucleiscreen.trainer.export import export_onnx  # noqa: E402
from nucleiscreen.trainer.train import train  # noqa: E402


@pytest.mark.parametrize("depth,norm", [(2, "batch"), (3, "group"), (1, "none")])
def test_unet_shapes(depth, norm):
    net = UNet(UNetConfig(depth=depth, base=4, norm=norm)).eval()
    m = 2**depth
    assert net(torch.zeros(2, 1, 3 * m, 5 * m)).shape == (2, 3, 3 * m, 5 * m)


def test_half_resolution_unet_keeps_full_size_io():
    cfg = UNetConfig(depth=2, base=4, scale=0.5, refine=2)
    assert cfg.multiple == 8
    net = UNet(cfg).eval()
    assert net(torch.zeros(2, 1, 24, 40)).shape == (2, 3, 24, 40)
    with pytest.raises(ValueError, match="scale"):
        UNetConfig(scale=0.25)


def test_half_resolution_export_matches_torch(tmp_path):
    cfg = {"model": {"depth": 2, "base": 4, "scale": 0.5, "refine": 2}, "train": [], "norm": {}}
    torch.manual_seed(0)
    net = UNet(UNetConfig(**cfg["model"])).eval()
    ck = {"model": net.state_dict(), "config": TrainConfig.from_dict({"model": cfg["model"]}).to_dict(), "step": 0}
    torch.save(ck, tmp_path / "best.pt")
    path = export_onnx(tmp_path / "best.pt", tmp_path / "half.onnx")
    assert load_model_info(path).multiple == 8
    x = np.random.default_rng(0).random((1, 1, 56, 72), dtype=np.float32)  # not the export's dummy size
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).argmax(1).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["classes"], {"image": x})[0]
    assert (got == ref).mean() >= 0.999


def test_dihedral_transforms_are_the_rotations_and_flips_and_invert():
    x = torch.arange(2 * 24.0).reshape(2, 1, 4, 6)
    seen = []
    for k in range(8):
        y = dihedral(x, k)
        want = torch.rot90(torch.flip(x, dims=(-1,)) if k >= 4 else x, k % 4, dims=(-2, -1))
        assert torch.equal(y, want)
        assert torch.equal(dihedral(y, k, inverse=True), x)
        seen.append(y.flatten().tolist())
    assert len({tuple(v) for v in seen}) == 8


def test_test_time_augmentation_is_equivariant_and_exports(tmp_path):
    torch.manual_seed(0)
    cfg = {"depth": 2, "base": 4, "scale": 0.5, "refine": 2}
    net = UNet(UNetConfig(**cfg)).eval()
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        _, probs = ExportHead(net, probabilities=True, tta=8)(x)
        _, turned = ExportHead(net, probabilities=True, tta=8)(torch.rot90(x, 1, dims=(-2, -1)))
        plain = ExportHead(net, probabilities=True)(x)[1]
    # averaged over the whole group, the output turns with the input, which a single pass does not
    assert torch.allclose(torch.rot90(probs, 1, dims=(-2, -1)), turned, atol=1e-5)
    assert not torch.allclose(probs, plain, atol=1e-3)
    with pytest.raises(ValueError, match="tta"):
        ExportHead(net, tta=3)
    ck = {"model": net.state_dict(), "config": TrainConfig.from_dict({"model": cfg}).to_dict(), "step": 0}
    torch.save(ck, tmp_path / "best.pt")
    path = export_onnx(tmp_path / "best.pt", tmp_path / "tta.onnx", tta=4)
    assert load_model_info(path).card["test_time_augmentation"] == 4
    image = np.random.default_rng(1).random((2, 1, 40, 64), dtype=np.float32)  # not square: turns swap H and W
    with torch.no_grad():
        ref = ExportHead(net, tta=4)(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["classes"], {"image": image})[0]
    assert got.shape == (2, 40, 64) and (got == ref).mean() >= 0.999
    with pytest.raises(UserError, match="1, 2, 4, 8"):
        export_onnx(tmp_path / "best.pt", tmp_path / "bad.onnx", tta=3)


def test_boundary_bias_shifts_the_argmax_only():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.0, 2.5], [4.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 3)
    assert class_argmax(logits).tolist() == [[[2, 2, 0]]]
    # a boundary call 1 above interior survives a bias of -0.75, one 0.5 above does not
    assert class_argmax(logits, -0.75).tolist() == [[[2, 1, 0]]]
    net = torch.nn.Identity()
    classes, probs = ExportHead(net, probabilities=True, boundary_bias=-0.75)(logits)
    assert classes.tolist() == [[[2, 1, 0]]] and torch.allclose(probs, torch.softmax(logits, 1))  # probs unbiased
    classes, probs = ExportHead(net, probabilities=True, tta=8, boundary_bias=-0.75)(logits.expand(1, 3, 3, 3))
    assert (classes == class_argmax(torch.log(probs), -0.75)).all()


@pytest.mark.parametrize("tta", [1, 4])
def test_calibrated_boundary_bias_is_exported_in_the_graph(tmp_path, tta):
    from nucleiscreen.engine.backends.torch import TorchBackend

    torch.manual_seed(0)
    cfg = {"depth": 2, "base": 4, "scale": 0.5, "refine": 2}
    net = UNet(UNetConfig(**cfg)).eval()
    ck = {"model": net.state_dict(), "config": TrainConfig.from_dict({"model": cfg}).to_dict(), "step": 0,
          "postprocessing": {"boundary_bias": -1.0, "max_grow": 3}}
    torch.save(ck, tmp_path / "best.pt")
    path = export_onnx(tmp_path / "best.pt", tmp_path / "m.onnx", tta=tta)
    card = load_model_info(path).card
    assert card["postprocessing"]["boundary_bias"] == -1.0 and "-1" in card["outputs"]["classes"]
    image = np.random.default_rng(2).random((2, 1, 32, 48), dtype=np.float32)
    with torch.no_grad():
        ref = ExportHead(net, tta=tta, boundary_bias=-1.0)(torch.from_numpy(image)).numpy()
        unbiased = ExportHead(net, tta=tta)(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["classes"], {"image": image})[0]
    assert (got == ref).mean() >= 0.999 and (ref != unbiased).any()
    if tta == 1:  # the torch backend runs the checkpoint with the same bias
        backend = TorchBackend(load_model_info(tmp_path / "best.pt"), device="cpu")
        assert (backend.infer(image) == ref).mean() >= 0.999


def test_init_adds_a_refinement_branch_without_changing_predictions(tmp_path):
    plain = {"depth": 2, "base": 4, "scale": 0.5}
    torch.manual_seed(0)
    net = UNet(UNetConfig(**plain)).eval()
    torch.save({"model": net.state_dict(), "config": TrainConfig.from_dict({"model": plain}).to_dict()},
               tmp_path / "plain.pt")
    cfg = TrainConfig.from_dict({"model": {**plain, "refine": 3, "refine_convs": 4}})
    grown = UNet(cfg.model)
    grown.load_state_dict(load_weights(str(tmp_path / "plain.pt"), cfg, grown))
    grown.eval()
    assert len(grown.refine) == 12  # 4 x (convolution, norm, ReLU)
    x = torch.rand(1, 1, 24, 40)
    with torch.no_grad():
        assert torch.allclose(grown(x), net(x), atol=1e-6)
    other = TrainConfig.from_dict({"model": {**plain, "base": 8, "refine": 3}})
    with pytest.raises(UserError, match="network"):
        load_weights(str(tmp_path / "plain.pt"), other, UNet(other.model))


def test_init_from_several_checkpoints_averages_their_weights(tiny_run, tmp_path):
    tmp, cfg = tiny_run
    first = torch.load(tmp / "run" / "best.pt", weights_only=False)
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in first["model"].items()}
    torch.save({**first, "model": other}, tmp_path / "other.pt")
    soup = {**cfg, "out": str(tmp_path / "soup"), "steps": 0, "init": [str(tmp / "run" / "best.pt"),
                                                                        str(tmp_path / "other.pt")]}
    train(TrainConfig.from_dict(soup), progress=False)  # steps 0: the average is the model, validated and calibrated
    ck = torch.load(tmp_path / "soup" / "best.pt", weights_only=False)
    for k, v in first["model"].items():
        assert torch.allclose(ck["model"][k].float(), v.float() + 0.5 if v.is_floating_point() else v.float())
    assert ck["step"] == 0 and "f1_mean" in ck["val"] and "min_area" in ck["postprocessing"]
    with pytest.raises(UserError, match="init must be"):
        TrainConfig.from_dict({**cfg, "init": []})


def test_train_logs_checkpoints_and_resumes(tiny_run):
    tmp, cfg = tiny_run
    run = tmp / "run"
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert json.loads((run / "config.json").read_text())["steps"] == 2
    with open(run / "log.csv", "a") as f:  # a row logged just before a kill, after the last checkpoint
        f.write("3,0.5,0.5,0.1,0.1,0.1,1e-3,9\n")
    train(TrainConfig.from_dict({**cfg, "steps": 4}), progress=False)
    lines = (run / "log.csv").read_text().splitlines()
    assert lines[0].startswith("step,train_loss") and [ln.split(",")[0] for ln in lines[1:]] == ["2", "4"]
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 4


@pytest.mark.parametrize("select_by", ["f1_mean", "f1_0.50"])
def test_resume_with_another_select_by_picks_the_best_anew(tiny_run, tmp_path, select_by):
    tmp, cfg = tiny_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    state = torch.load(run / "last.pt", weights_only=False)
    state["best"] = 2.0  # unbeatable by the metric it was picked with (f1_mean)
    torch.save(state, run / "last.pt")
    before = torch.load(run / "best.pt", weights_only=False)["step"]
    steps = state["step"] + 2
    train(TrainConfig.from_dict({**cfg, "out": str(run), "steps": steps, "select_by": select_by}), progress=False)
    expected = before if select_by == "f1_mean" else steps
    assert torch.load(run / "best.pt", weights_only=False)["step"] == expected


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})


def test_target_options_reach_the_training_samples(aits):
    cfg = TrainConfig.from_dict({"solid_area": 50, "small_area": 80, "boundary_width": 3})
    (sample,) = load_folder(aits / "train", cfg.norm, None, cfg.target, limit=1)
    areas = np.bincount(sample.labels.ravel())
    solid = (areas < 50)[sample.labels] & (sample.labels > 0)
    assert solid.any() and (sample.classes[solid] == 1).all()
    assert (sample.small == ((areas < 80)[sample.labels] & (sample.labels > 0) & (sample.classes == 1))).all()
    big = (areas >= 50)[sample.labels] & (sample.labels > 0)
    assert (sample.classes[big] == classes_from_instances(sample.labels, 3)[big]).all()


def test_deformation_warps_image_and_labels_together():
    rng = np.random.default_rng(0)
    labels = np.zeros((96, 96), np.int32)
    labels[20:40, 30:60] = 1
    labels[60:80, 10:30] = 2
    image = (labels > 0).astype(np.float32)
    spec = Deformation(p=1.0, zoom=0.2, elastic=4.0)
    for _ in range(5):
        img, lab = deform(image, labels, rng, spec)
        assert img.shape == lab.shape == labels.shape and lab.dtype == np.int32
        assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).any() and (lab == 2).any()
        assert ((img > 0.5) == (lab > 0)).mean() > 0.99  # the labels follow the image
        assert not (lab == labels).all()  # it did move
    _, same = deform(image, labels, rng, Deformation(p=1.0, zoom=0.0, elastic=0.0))
    assert 0.98 < (same > 0).sum() / (labels > 0).sum() < 1.02  # a rotation alone keeps the areas


def test_deformed_crops_get_targets_made_from_the_warped_labels(aits):
    cfg = TrainConfig.from_dict({"solid_area": 50, "deformation": {"p": 1.0}})
    samples = load_folder(aits / "train", cfg.norm, None, cfg.target, limit=2)
    stream = CropStream([Source(samples)], 128, 4, 0.0, cfg.norm, 0, cfg.target, cfg.deformation)
    b = stream.next()
    x, y, small, labels = b.image, b.classes, b.small, b.labels
    assert x.shape == (4, 1, 128, 128) and y.shape == small.shape == labels.shape == (4, 128, 128)
    for cls, lab in zip(y.numpy(), labels):
        assert ((cls > 0) == (lab > 0)).all()  # every labelled pixel is interior or boundary, nothing else
    with pytest.raises(UserError, match="deformation"):
        TrainConfig.from_dict({"deformation": {"p": 2.0}})
    with pytest.raises(UserError, match="unexpected keyword"):
        TrainConfig.from_dict({"deformation": {"zoomm": 0.1}})


def test_export_matches_torch_on_real_images(tiny_run, aits):
    tmp, _ = tiny_run
    onnx_path = export_onnx(tmp / "run" / "best.pt", tmp / "m.onnx")
    info = load_model_info(onnx_path)
    assert info.card["classes"] == ["background", "interior", "boundary"]
    assert info.multiple == 4 and info.input_dtype == "float32"
    assert {"normalization", "pixel_size_um", "postprocessing", "training_data", "validation_metrics"} <= set(info.card)
    ck = torch.load(tmp / "run" / "best.pt", weights_only=False)
    net = UNet(UNetConfig(**ck["config"]["model"]))
    net.load_state_dict(ck["model"])
    net.eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree = total = 0
    for path in sorted((aits / "val" / "images").glob("*.png"))[:2]:
        x = normalize(read_frame(path))[:256, :256]
        with torch.no_grad():
            ref = net(torch.from_numpy(x)[None, None]).argmax(1)[0].numpy()
        got = sess.run(["classes"], {"image": x[None, None]})[0][0]
        assert got.dtype == np.uint8
        agree += (got == ref).sum()
        total += ref.size
    assert agree / total >= 0.999


def test_fp16_export_with_probabilities(tiny_run):
    tmp, _ = tiny_run
    path = export_onnx(tmp / "run" / "best.pt", tmp / "m16.onnx", fp16=True, probabilities=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float16)"
    classes, probs = sess.run(None, {"image": np.zeros((1, 1, 32, 48), np.float16)})
    assert classes.shape == (1, 32, 48) and classes.dtype == np.uint8
    assert probs.shape == (1, 3, 32, 48)
    assert load_model_info(path).input_dtype == "float16"
