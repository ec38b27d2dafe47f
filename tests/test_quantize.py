"""trainer/quantize.py: the exact head folding and the INT8 model file (agreement with the FP32 model)."""

import numpy as np
import pytest

from nucleiscreen.engine.model import default_model_path, load_model_info
from nucleiscreen.engine.readers import read_frame

pytest.importorskip("onnx")


def _classes(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return session.run(["classes"], {"image": x})[0]


def test_fold_head_is_exact():
    """The folded head computes the shipped model's class map (up to float rounding at exact ties)."""
    import onnx

    from nucleiscreen.trainer.quantize import fold_head

    model = onnx.load(str(default_model_path()))
    folded = fold_head(onnx.load(str(default_model_path())))
    ops = [n.op_type for n in folded.graph.node]
    assert len(ops) < len(model.graph.node) and ops.count("Resize") == 1
    x = np.random.default_rng(0).random((1, 1, 128, 96), dtype=np.float32)
    a, b = _classes(model.SerializeToString(), x), _classes(folded.SerializeToString(), x)
    assert np.mean(a == b) > 0.9999


def test_quantize_shipped_model(aits, tmp_path):
    """Two 256x256 training crops calibrate an INT8 model whose class map agrees with the FP32 model's on >= 97 % of
    a validation crop's pixels; its card says int8 and lists the calibration frames."""
    from nucleiscreen.trainer.quantize import engine_input, quantize_model

    train = sorted((aits / "train" / "images").iterdir())[:2]
    crops = [read_frame(p)[400:656, 400:656] for p in train]
    out = quantize_model(default_model_path(), tmp_path / "int8.onnx", crops)

    info = load_model_info(out)
    assert info.card["precision"] == "int8"
    assert info.card["quantization"]["calibration_frames"] == ["array 256x256 uint8"] * 2
    assert info.card["postprocessing"] == load_model_info(None).card["postprocessing"]
    val = read_frame(sorted((aits / "val" / "images").iterdir())[0])[300:556, 300:556]
    x = engine_input(val, info)
    agree = np.mean(_classes(out, x) == _classes(default_model_path(), x))
    assert agree >= 0.97, agree


def test_auto_runs_the_shipped_int8_model_on_a_cpu_and_names_pick_shipped_models():
    from nucleiscreen.engine.backends import auto_backend
    from nucleiscreen.engine.model import shipped_models
    from nucleiscreen.engine.segmenter import Segmenter

    assert set(shipped_models()) == {"unet-small", "unet-small-int8", "unet-tiny-int8"}
    int8 = load_model_info("unet-small-int8")
    assert int8.card["precision"] == "int8" and len(int8.card["quantization"]["calibration_frames"]) == 30
    assert int8.card["postprocessing"] == load_model_info("unet-small.onnx").card["postprocessing"]
    import onnxruntime as ort

    if auto_backend(load_model_info()) != "onnxruntime" or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU backend is available here: auto keeps the FP32 model")
    assert Segmenter().info.path.name == "unet-small-int8.onnx"
    assert Segmenter(backend="onnxruntime").info.path.name == "unet-small.onnx"  # an explicit backend: FP32
