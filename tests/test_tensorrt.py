"""The TensorRT backend: what can be checked without a GPU, and its agreement with onnxruntime where one exists."""

import numpy as np
import pytest

from nucleiscreen.engine.backends import create_backend, tensorrt
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.errors import UserError


def test_plan_key_separates_gpu_version_and_size():
    info = load_model_info()
    base = tensorrt.plan_key(info, "NVIDIA H100 80GB HBM3", "10.13.0", 1104, 1104, 32)
    assert base == tensorrt.plan_key(info, "NVIDIA H100 80GB HBM3", "10.13.0", 1104, 1104, 32)
    others = {tensorrt.plan_key(info, "NVIDIA H200", "10.13.0", 1104, 1104, 32),
              tensorrt.plan_key(info, "NVIDIA H100 80GB HBM3", "11.0.0", 1104, 1104, 32),
              tensorrt.plan_key(info, "NVIDIA H100 80GB HBM3", "10.13.0", 1120, 1120, 32)}
    assert base not in others and len(others) == 3


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NUCLEISCREEN_CACHE", str(tmp_path))
    assert tensorrt.cache_dir() == tmp_path / "tensorrt"


@pytest.mark.skipif(tensorrt.available(), reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_one_line_user_error():
    with pytest.raises(UserError, match="nucleiscreen\\[gpu\\]"):
        create_backend("tensorrt", load_model_info())


@pytest.mark.skipif(not tensorrt.available(), reason="needs TensorRT, pycuda and a CUDA GPU")
def test_tensorrt_agrees_with_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEISCREEN_CACHE", str(tmp_path))
    info = load_model_info()
    x = np.random.default_rng(0).random((3, 1, 256, 256), np.float32)
    trt_out = create_backend("tensorrt", info).infer(x)
    ort_out = create_backend("onnxruntime", info).infer(x)
    assert trt_out.dtype == np.uint8 and (trt_out == ort_out).mean() >= 0.999
    assert list((tmp_path / "tensorrt").glob("*.plan"))  # cached for the next run
