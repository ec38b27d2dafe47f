"""Every available backend gives the same class map for the same model."""

import numpy as np
import pytest

from nucleiscreen.engine.backends import create_backend
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError

pytest.importorskip("torch")
pytest.importorskip("onnx")

from nucleiscreen.trainer.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def models(tiny_run):
    tmp, _ = tiny_run
    ckpt = tmp / "run" / "best.pt"
    return {"pt": ckpt, "fp32": export_onnx(ckpt, tmp / "b32.onnx"), "fp16": export_onnx(ckpt, tmp / "b16.onnx",
                                                                                          fp16=True)}


@pytest.fixture(scope="module")
def frames(aits):
    seg = Segmenter()  # only for its normalization
    paths = sorted((aits / "val" / "images").glob("*.png"))[:2]
    return np.stack([seg.prepare(read_frame(p))[:256, :320] for p in paths])[:, None]


def _classes(model, backend, frames):
    return create_backend(backend, load_model_info(model)).infer(frames)


def test_torch_and_onnxruntime_agree(models, frames):
    a = _classes(models["pt"], "torch", frames)
    b = _classes(models["fp32"], "onnxruntime", frames)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (2, 256, 320)
    assert (a == b).mean() >= 0.999


def test_fp16_model_agrees_with_fp32(models, frames):
    a = _classes(models["fp32"], "onnxruntime", frames)
    b = _classes(models["fp16"], "onnxruntime", frames)
    assert (a == b).mean() >= 0.999


def test_auto_picks_by_model_file(models):
    assert create_backend("auto", load_model_info(models["pt"])).name == "torch"
    assert create_backend("auto", load_model_info(models["fp32"])).name == "onnxruntime"


def test_wrong_file_for_backend_is_a_user_error(models):
    with pytest.raises(UserError, match="export it"):
        create_backend("onnxruntime", load_model_info(models["pt"]))


def test_torch_runs_exported_onnx_files(models, frames):
    ref = _classes(models["pt"], "torch", frames)
    for name in ("fp32", "fp16"):  # the FP16 file computes in FP32 on the CPU
        assert (_classes(models[name], "torch", frames) == ref).mean() >= 0.999


def test_segment_with_the_torch_backend(models, tmp_path):
    import tifffile

    from nucleiscreen.simulate import synth_frame

    src = tmp_path / "frames"
    src.mkdir()
    img, _ = synth_frame(np.random.default_rng(0), (96, 96))
    tifffile.imwrite(src / "P_A01f00d0.tif", img)
    res = segment([src], tmp_path / "run", model=models["pt"], options=SegmentOptions(progress=False))
    assert res.frames == 1 and res.backend.startswith("torch")


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU")
def test_torch_cuda_fp16_agrees_with_cpu(models, frames):
    from nucleiscreen.engine.backends.torch import TorchBackend

    info = load_model_info(models["pt"])
    gpu = TorchBackend(info).infer(frames)
    cpu = TorchBackend(info, device="cpu").infer(frames)
    assert (gpu == cpu).mean() >= 0.999
