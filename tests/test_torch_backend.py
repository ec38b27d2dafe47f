"""The shipped ONNX model on the torch backend: the same class maps as onnxruntime, the same normalization."""

import numpy as np
import pytest

from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.normalize import Normalization, normalize, percentiles
from nucleiscreen.simulate import synth_frame

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from nucleiscreen.engine.backends import create_backend  # noqa: E402
from nucleiscreen.engine.backends.torch import TorchBackend, normalize_on_device  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def val_frames(aits):
    return [read_frame(p) for p in sorted((aits / "val" / "images").glob("*.png"))]


def _padded(frames, norm, multiple=32):
    x = np.stack([normalize(f, norm) for f in frames])
    h, w = x.shape[1:]
    return np.pad(x, ((0, 0), (0, (-h) % multiple), (0, (-w) % multiple)), mode="reflect")[:, None], (h, w)


def test_shipped_model_on_torch_matches_onnxruntime_on_the_lab_validation_frames(val_frames):
    info = load_model_info()  # no --model: the shipped file
    ort = create_backend("onnxruntime", info)
    tb = create_backend("torch", info)
    assert tb.name == "torch" and "cpu" in tb.description
    post = {k: info.postprocessing[k] for k in ("max_grow", "min_area")}
    assert len(val_frames) == 10
    for frame in val_frames:
        x, (h, w) = _padded([frame], info.normalization)
        a, b = ort.infer(x)[0, :h, :w], tb.infer(x)[0, :h, :w]
        assert (a == b).mean() >= 0.999
        na = instances_from_classes(a, **post).max()
        nb = instances_from_classes(b, **post).max()
        assert abs(int(na) - int(nb)) <= 1


def test_raw_frames_give_the_class_maps_of_host_normalization(val_frames):
    """submit_raw: normalization, padding and ArgMax on the device, the result cropped to the frames."""
    info = load_model_info()
    tb = TorchBackend(info, device="cpu")
    frames = np.stack([synth_frame(np.random.default_rng(i), (300, 270))[0] for i in range(2)])
    x, (h, w) = _padded(frames, info.normalization)
    ref = create_backend("onnxruntime", info).infer(x)[:, :h, :w]
    got = tb.collect_raw(tb.submit_raw(frames))
    assert got.shape == (2, 300, 270) and got.dtype == np.uint8
    assert (got == ref).mean() >= 0.999


@pytest.mark.parametrize("norm", [Normalization(), Normalization(low=1, high=99, min_ratio=1, min_range=500)])
def test_device_normalization_gives_the_cpu_kernel_percentiles_exactly(norm):
    rng = np.random.default_rng(3)
    frames = [synth_frame(np.random.default_rng(i), (257, 301))[0] for i in range(3)]
    frames.append(rng.integers(0, 65536, (257, 301), dtype=np.uint16))  # every bin, up to 65535
    frames.append(np.full((257, 301), 1000, np.uint16))  # flat: the range floors decide
    frames.append(np.concatenate([np.zeros((257, 300), np.uint16), np.full((257, 1), 65535, np.uint16)], 1))
    stack = np.stack(frames)
    x, lo, hi = normalize_on_device(torch.from_numpy(stack.view(np.int16)), norm)
    for k, f in enumerate(frames):
        assert (lo[k].item(), hi[k].item()) == percentiles(f, norm.low, norm.high)
        np.testing.assert_allclose(x[k].numpy(), normalize(f, norm), rtol=0, atol=1e-6)
    u8 = stack[:2].astype(np.uint8)
    _, lo, hi = normalize_on_device(torch.from_numpy(u8), norm)
    assert [(a, b) for a, b in zip(lo.tolist(), hi.tolist())] == [percentiles(f, norm.low, norm.high) for f in u8]


def test_unknown_onnx_operator_is_a_clear_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from nucleiscreen.engine.backends.onnx_torch import OnnxModule
    from nucleiscreen.errors import UserError

    node = helper.make_node("Erf", ["image"], ["classes"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "erf.onnx")
    with pytest.raises(UserError, match="'Erf'"):
        OnnxModule(tmp_path / "erf.onnx")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("options", [{}, {"graphs": True}])
def test_cuda_raw_path_matches_cpu_onnxruntime(val_frames, options):
    info = load_model_info()
    tb = TorchBackend(info, **options)
    assert tb.cuda
    frames = np.stack(val_frames[:4])
    x, (h, w) = _padded(frames, info.normalization)
    ref = create_backend("onnxruntime", info).infer(x)[:, :h, :w]
    tokens = [tb.submit_raw(frames) for _ in range(3)]  # several in flight: the pinned buffers must not mix up
    for t in tokens:
        assert (tb.collect_raw(t) == ref).mean() >= 0.999


@pytest.mark.cuda
@cuda
def test_cuda_device_normalization_matches_the_cpu_kernel():
    frames = np.stack([synth_frame(np.random.default_rng(i), (1104, 1104))[0] for i in range(4)])
    norm = Normalization()
    _, lo, hi = normalize_on_device(torch.from_numpy(frames.view(np.int16)).cuda(), norm)
    assert list(zip(lo.tolist(), hi.tolist())) == [percentiles(f, norm.low, norm.high) for f in frames]


def test_segment_on_torch_sends_raw_frames_and_matches_onnxruntime(tmp_path):
    """The pipeline hands a raw-input backend the raw uint16 frames (normalized on its device): the image table equals
    onnxruntime's, whose frames the host normalizes, within the backends' parity."""
    import polars as pl
    import tifffile

    from nucleiscreen.engine.pipeline import SegmentOptions
    from nucleiscreen.engine.run import segment
    from nucleiscreen.engine.segmenter import Segmenter

    src = tmp_path / "frames"
    src.mkdir()
    for i in range(6):
        tifffile.imwrite(src / f"P_A0{i + 1}f00d0.tif", synth_frame(np.random.default_rng(i), (200, 232))[0])
    assert Segmenter(backend="torch").raw_input and not Segmenter(backend="onnxruntime").raw_input
    tables = {}
    for backend in ("torch", "onnxruntime"):
        res = segment([src], tmp_path / backend, options=SegmentOptions(backend=backend, batch_size=4, progress=False))
        assert res.frames == 6 and res.failed == 0 and res.backend.startswith(backend)
        tables[backend] = pl.read_parquet(tmp_path / backend / "images", hive_partitioning=False).sort("FileName_DNA")
    a, b = tables["torch"], tables["onnxruntime"]
    assert a["ImageQuality_FocusScore_DNA"].to_list() == b["ImageQuality_FocusScore_DNA"].to_list()
    assert ((a["Count_Nuclei"] - b["Count_Nuclei"]).abs() <= 1).all()
