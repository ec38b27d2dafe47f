"""The OpenVINO backend gives onnxruntime's class maps for the shipped models and compiles each shape once; auto
does not pick it."""

import numpy as np
import pytest

from nucleiscreen.engine.backends import CPU_MODEL, create_backend
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.segmenter import Segmenter

pytest.importorskip("openvino")

from nucleiscreen.engine.backends.openvino import SHAPES_KEPT  # noqa: E402


@pytest.fixture(scope="module")
def frames(aits):
    seg = Segmenter("unet-small", "onnxruntime")  # for its normalization
    paths = sorted((aits / "val" / "images").glob("*.png"))[:2]
    return np.stack([seg.prepare(read_frame(p))[:256, :320] for p in paths])[:, None]


@pytest.mark.parametrize("model", ["unet-small", "unet-small-int8"])
def test_openvino_agrees_with_onnxruntime(model, frames):
    info = load_model_info(model)
    a = create_backend("openvino", info, threads=1).infer(frames)
    b = create_backend("onnxruntime", info, threads=1).infer(frames)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (2, 256, 320)
    assert (a == b).mean() >= 0.999
    assert {0, 1, 2} <= set(np.unique(a))


def test_each_shape_is_compiled_once_and_few_are_kept(frames):
    backend = create_backend("openvino", load_model_info("unet-small-int8"), threads=1)
    first = backend.infer(frames)
    assert np.array_equal(backend.infer(frames[:1]), first[:1])  # a last, smaller batch of the plate
    assert set(backend.compiled) == {(2, 1, 256, 320), (1, 1, 256, 320)}
    request = backend.compiled[(2, 1, 256, 320)][0]
    backend.infer(frames)
    assert backend.compiled[(2, 1, 256, 320)][0] is request
    for w in range(SHAPES_KEPT + 1):
        backend.infer(np.ascontiguousarray(frames[:1, :, :, : 32 * (w + 1)]))
    assert len(backend.compiled) == SHAPES_KEPT


def test_auto_does_not_pick_openvino():
    from nucleiscreen.engine.backends import auto_backend

    assert auto_backend(load_model_info(CPU_MODEL)) != "openvino"  # slower here, and it slows its process


def test_checkpoints_are_refused(tiny_run):
    from nucleiscreen.errors import UserError

    with pytest.raises(UserError, match="export it"):
        create_backend("openvino", load_model_info(tiny_run[0] / "run" / "best.pt"))
