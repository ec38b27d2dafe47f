"""Distillation: the teacher's logits are the model file's own, the soft loss pulls the student to them, and a
training config with a teacher trains."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from nucleiscreen.engine.model import load_model_info  # noqa: E402
from nucleiscreen.errors import UserError  # noqa: E402
from nucleiscreen.kernels.normalize import Normalization, normalize  # noqa: E402
from nucleiscreen.trainer.config import TrainConfig  # noqa: E402
from nucleiscreen.trainer.distill import Teacher, distill_loss  # noqa: E402


def test_teacher_logits_give_the_model_files_class_map(aits):
    import onnxruntime as ort

    from nucleiscreen.engine.readers import read_frame

    info = load_model_info("unet-small")
    raw = read_frame(sorted((aits / "train" / "images").iterdir())[0])[:256, :256]
    x = normalize(raw, info.normalization)[None, None].astype(np.float32)
    logits = Teacher("unet-small", info.normalization, threads=1)(torch.from_numpy(x))
    assert logits.shape == (1, 3, 256, 256)
    bias = info.postprocessing["boundary_bias"]
    mine = torch.argmax(torch.cat([logits[:, :2], logits[:, 2:] + bias], 1), 1).numpy()
    (classes,) = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert np.mean(mine == classes) > 0.999
    assert {0, 1, 2} <= set(np.unique(classes))


def test_distill_loss_is_least_where_the_student_matches_the_teacher():
    teacher = torch.randn(2, 3, 8, 8)
    w = torch.ones(2, 8, 8)
    student = teacher.clone().requires_grad_(True)
    loss = distill_loss(student, teacher, w)
    loss.backward()
    assert float(student.grad.abs().max()) < 1e-6  # the softmaxes agree: no pull
    assert float(distill_loss(torch.randn(2, 3, 8, 8), teacher, w)) > float(loss)
    assert float(distill_loss(student.detach(), teacher, 10 * w)) == pytest.approx(float(loss), rel=1e-5)  # a mean
    ce = -(torch.softmax(teacher, 1) * torch.log_softmax(student.detach(), 1)).sum(1)
    heavy = torch.ones(2, 8, 8)
    heavy[0] = 9  # pixel weights weight the mean
    expected = 0.9 * ce[0].mean() + 0.1 * ce[1].mean()
    assert float(distill_loss(student.detach(), teacher, heavy)) == pytest.approx(float(expected), rel=1e-5)


def test_teacher_with_another_normalization_is_refused():
    with pytest.raises(UserError, match="normalizes frames otherwise"):
        Teacher("unet-small", Normalization(low=1.0))
    with pytest.raises(UserError, match="arch unet"):
        TrainConfig.from_dict({"teacher": "unet-small", "arch": "hover"})


def test_training_with_a_teacher(tiny_run, tmp_path):
    from nucleiscreen.trainer.train import train

    _, cfg = tiny_run
    run = train(TrainConfig.from_dict({**cfg, "out": str(tmp_path / "kd"), "teacher": "unet-small",
                                       "distill": 2.0, "keep_checkpoints": True}), progress=False)
    ck = torch.load(run / "best.pt", weights_only=False)
    assert ck["config"]["teacher"] == "unet-small" and ck["step"] == 2
    assert torch.load(run / "step2.pt", weights_only=False)["step"] == 2  # each validation's weights kept


def test_the_shipped_tiny_model_was_distilled_and_runs():
    from nucleiscreen.engine.segmenter import Segmenter
    from nucleiscreen.simulate import synth_frame

    info = load_model_info("unet-tiny-int8")
    assert info.card["precision"] == "int8" and info.card["model"]["base"] == 8
    assert info.card["training_data"]["teacher"] == "unet-small"
    raw, truth = synth_frame(np.random.default_rng(3), (256, 256))
    seg = Segmenter("unet-tiny-int8", "onnxruntime", threads=1, pixel_size=None)
    labels = seg.instances(seg.classes([seg.prepare(raw)], raw.shape)[0], raw)
    assert labels.max() >= 0.5 * truth.max()


def test_sources_choose_annotations_or_teacher_per_crop(aits):
    """A source with ``labels: false`` gives only the teacher's targets, one with ``distill: false`` only its
    annotations; ``match`` picks images by stem."""
    from nucleiscreen.trainer.data import CropStream, Source, load_folder

    cfg = TrainConfig()
    stems = sorted(p.stem for p in (aits / "train" / "images").iterdir())
    picked = load_folder(aits / "train", cfg.norm, None, cfg.target, match=f"^{stems[1]}$")
    assert [s.name for s in picked] == [stems[1]]
    with pytest.raises(UserError, match="match"):
        load_folder(aits / "train", cfg.norm, None, cfg.target, match="^nothing-is-called-this$")
    stream = CropStream([Source(picked, 1.0, labels=False), Source(picked, 1.0, distill=False)], 64, 16, 0.0,
                        cfg.norm, 0, cfg.target)
    b = stream.next()
    assert b.annotated.any() and b.distilled.any()
    assert not (b.annotated & b.distilled).any()  # each crop came from one of the two sources
    with pytest.raises(UserError, match="regular expression"):
        TrainConfig.from_dict({"train": [{"path": "x", "match": "("}]})


def test_rescaled_sources_get_the_models_nucleus_area(aits):
    """``rescale`` resizes each image so its typical nucleus area is the card's (the automatic scale's measure)."""
    from nucleiscreen.kernels.measure import typical_area
    from nucleiscreen.trainer.data import load_folder

    cfg = TrainConfig()
    (s,) = load_folder(aits / "train", cfg.norm, 4 * 1729.0, cfg.target, limit=1)
    area, _ = typical_area([s.labels])
    assert s.image.shape[0] > 1.5 * 1104 and area == pytest.approx(4 * 1729.0, rel=0.1)


def test_training_a_model_files_graph_and_exporting_it(tiny_run, tmp_path, aits):
    """``init`` naming a model file trains its own graph (batch norms folded); export writes the weights and the
    calibrated post-processing into a copy of the file, which the engine runs."""
    from nucleiscreen.engine.segmenter import Segmenter
    from nucleiscreen.trainer.export import export_onnx
    from nucleiscreen.trainer.train import train

    _, cfg = tiny_run
    folder = cfg["train"][0]["path"]
    run = train(TrainConfig.from_dict({
        **cfg, "out": str(tmp_path / "g"), "init": "unet-small", "teacher": "unet-small", "model": {},
        "train": [{"path": folder}, {"path": folder, "distill": False, "rescale": True}],
        "val": [folder, {"path": folder, "limit": 1}], "crop": 64, "lr": 1e-5}), progress=False)
    ck = torch.load(run / "best.pt", weights_only=False)
    assert ck["config"]["model"]["base"] == 16 and "postprocessing" in ck and len(ck["val_more"]) == 1
    assert "val1_f1_mean" in (run / "log.csv").read_text().splitlines()[0]
    out = export_onnx(run / "best.pt", tmp_path / "g.onnx")
    info = load_model_info(out)
    assert info.card["training_data"]["finetuned_from"]["path"] == "unet-small.onnx"
    assert info.postprocessing["boundary_bias"] == ck["postprocessing"]["boundary_bias"]
    with pytest.raises(UserError, match="FP32 graph only"):
        export_onnx(run / "best.pt", tmp_path / "g16.onnx", fp16=True)
    from nucleiscreen.engine.readers import read_frame

    raw = read_frame(sorted((aits / "val" / "images").iterdir())[0])
    seg = Segmenter(str(out), "onnxruntime", threads=1, pixel_size=None)
    assert seg.instances(seg.classes([seg.prepare(raw)], raw.shape)[0], raw).max() > 10
