"""One model on one backend: a raw frame in; its class map, nuclei and measurements out.

The pieces the streaming pipeline (``engine/pipeline.py``), ``predict`` and the benchmarks share, so a frame is
treated the same way everywhere:

    load      read the file, one histogram of the raw frame for its quality values and its normalization range,
              and the network input (normalized, resized to the model's pixel size); on a backend that takes raw
              frames (torch: normalization on its device) the raw frame is the input
    submit    a batch of same-shape inputs to the backend (asynchronous where the backend is), ``collect`` its class
              maps (uint8: 0 background, 1 interior, 2 boundary) cropped and resized back to the frames
    measure   the object filter (``kernels/contrast.py``, the normalized frame read on the fly from the raw one), then
              nuclei and their measurements in one fused pass (``kernels/measure.py``)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from nucleiscreen.engine.backends import Backend, auto_model, create_backend
from nucleiscreen.engine.channels import NUCLEI
from nucleiscreen.engine.model import ModelInfo, load_model_info
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import segment_frame
from nucleiscreen.kernels.normalize import histogram, normalization_range, normalize
from nucleiscreen.kernels.postprocess import PostProcessing, filter_classes
from nucleiscreen.kernels.quality import frame_quality
from nucleiscreen.kernels.resize import resize

RAW_DTYPES = (np.uint8, np.uint16)  # what a backend with ``raw_input`` normalizes itself


class FrameCheckError(FrameReadError):
    """A frame that decodes but cannot be segmented: non-finite pixels, no signal, or not its plate's size."""


@dataclass
class Frame:
    """A decoded frame and what the network and the post-processing need of it."""

    raw: np.ndarray
    input: np.ndarray  # what the backend is given: the normalized network input, or the raw frame (raw_input)
    rescale: tuple[float, float] | None  # (lo, scale) of the normalization for uint8/uint16 frames, else None
    quality: dict[str, float]  # ImageQuality_* (kernels/quality.py), of every channel read
    # the field's other channels: each raw frame and its illumination correction (background, 1 / flat, b0) or None
    markers: dict[str, tuple[np.ndarray, tuple | None]] = field(default_factory=dict)


@dataclass
class Pending:
    """A batch submitted to the network: the backend's token."""

    token: object
    raw: bool  # submitted as raw frames (submit_raw/collect_raw)
    n: int
    size: tuple[int, int]  # the inputs' size (before padding)
    shape: tuple[int, int] | None  # the raw frames' shape, when the class maps must be resized back to it


def check(raw: np.ndarray, hist: np.ndarray | None, shape: tuple[int, int] | None, name: str) -> None:
    """Refuse a decoded frame that cannot be segmented: not 2-D, of another size than its plate's frames (another
    binning or a stray file: its nuclei would be of another size), with NaN or infinite pixels, or of one value only
    (blank, or saturated throughout; a partly saturated frame is segmented and its ``PercentMaximal`` tells)."""
    if raw.ndim != 2:
        raise FrameCheckError(f"{name}: not a 2-D frame (shape {raw.shape})")
    if shape is not None and raw.shape != tuple(shape):
        raise FrameCheckError(f"{name}: a {raw.shape[1]}x{raw.shape[0]} frame; its plate's frames are "
                              f"{shape[1]}x{shape[0]}")
    if raw.dtype.kind == "f":
        bad = raw.size - int(np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise FrameCheckError(f"{name}: {bad} NaN or infinite pixels")
    if raw.size == 0:
        raise FrameCheckError(f"{name}: an empty frame")
    if np.count_nonzero(hist) == 1 if hist is not None else raw.min() == raw.max():
        value = raw.flat[0]
        what = "blank" if value == 0 else "saturated" if hist is not None and value == hist.size - 1 else "flat"
        raise FrameCheckError(f"{name}: {what}, every pixel is {value}")


class Segmenter:
    """One model on one backend with the post-processing of its card, some settings overridden (``overrides``:
    ``PostProcessing`` fields in the frames' pixels, None values not given), for frames of ``pixel_size`` um (None:
    the model's)."""

    def __init__(self, model: str | Path | ModelInfo | None = None, backend: str | Backend = "auto",
                 threads: int | None = None, overrides: dict | None = None, pixel_size: float | None = None):
        if model is None and isinstance(backend, str):
            self.info = auto_model(backend)  # the shipped model this machine runs best
        else:
            self.info = model if isinstance(model, ModelInfo) else load_model_info(model)
        # a backend's name, or a backend object (a benchmark's own)
        self.backend = create_backend(backend, self.info, threads=threads) if isinstance(backend, str) else backend
        self.norm = self.info.normalization
        self.multiple = self.info.multiple
        self.card_post = PostProcessing.from_card(self.info.postprocessing)  # in the model's pixels
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        try:
            self.card_post.with_overrides(self.overrides)
        except ValueError as exc:  # "min_area must be ...": the option's name
            name, _, rest = str(exc).partition(" ")
            raise UserError(f"--{name.replace('_', '-')} {rest}") from None
        # Frames at another pixel size (a 10x or 40x screen) are resized to the model's before inference and the
        # class map back after it, so nuclei have the size the network was trained on.
        model_px = self.info.card.get("pixel_size_um")
        if pixel_size is not None and pixel_size <= 0:
            raise UserError(f"--pixel-size must be positive, got {pixel_size}")
        self._set_scale(pixel_size / model_px if pixel_size and model_px and abs(pixel_size / model_px - 1) > 0.02
                        else 1.0)

    def at_scale(self, scale: float) -> Segmenter:
        """This segmenter (same model, backend and overrides) for frames resized by ``scale`` before inference: a
        plate whose nuclei are ``1 / scale`` times the model's size (``engine/scale.py``)."""
        other = copy.copy(self)
        other._set_scale(scale)
        return other

    def _set_scale(self, scale: float) -> None:
        self.scale = scale
        # Raw frames go to a backend that normalizes on its device (only uint8/uint16 ones at the model's scale).
        self.raw_input = self.backend.raw_input and self.scale == 1.0
        # Post-processing runs on the class map at the frame's own size, so the card's lengths and areas (in model
        # pixels) are converted to frame pixels; an override is in frame pixels already.
        self.post = self.card_post.at_scale(scale).with_overrides(self.overrides)

    # -- frames in ----------------------------------------------------------------------------------------------------
    def load(self, path: str | Path, shape: tuple[int, int] | None = None, channel: str = NUCLEI) -> Frame:
        """Read and prepare one frame of the ``channel`` named; ``FrameReadError`` for a file that is not one 2-D
        frame, ``FrameCheckError`` for one that is but cannot be segmented (see ``check``). ``shape``: the frame size
        of its plate."""
        raw = read_frame(path)
        hist = histogram(raw)  # one pass for the checks, the quality values and the normalization range
        check(raw, hist, shape, Path(path).name)
        quality = frame_quality(raw, hist, channel)
        rescale = normalization_range(raw, self.norm, hist) if hist is not None else None
        x = raw if self.raw_input and hist is not None else self.prepare(raw, hist)
        return Frame(raw, x, rescale, quality)

    def prepare(self, raw: np.ndarray, hist: np.ndarray | None = None) -> np.ndarray:
        """The normalized network input of a raw frame (float32; resized to the model's pixel size if needed)."""
        x = normalize(raw, self.norm, hist=hist)
        if self.scale != 1.0:
            x = resize(x, (max(1, round(x.shape[0] * self.scale)), max(1, round(x.shape[1] * self.scale))))
        return x

    # -- the network --------------------------------------------------------------------------------------------------
    def submit(self, inputs: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> Pending:
        """Start the network on same-shape, same-dtype inputs (``Frame.input``) in one batch. Raw frames go to the
        backend as they are (it normalizes and pads them on its device); prepared ones are padded to the network's
        multiple here. On an asynchronous backend (TensorRT, torch on CUDA) this returns at once, so the caller can
        prepare the next batch meanwhile; otherwise the result is computed here."""
        h, w = inputs[0].shape
        if inputs[0].dtype in RAW_DTYPES and self.raw_input:
            return Pending(self.backend.submit_raw(inputs), True, len(inputs), (h, w), shape)
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        batch = np.stack([np.pad(x, ((0, ph), (0, pw)), mode="reflect") if ph or pw else x for x in inputs])
        return Pending(self.backend.submit(batch[:, None]), False, len(inputs), (h, w), shape)

    def collect(self, pending: Pending) -> list[np.ndarray]:
        """The class maps of a submitted batch (waits for it), cropped back and resized to the raw frames' shape
        when the frames were rescaled."""
        out = self.backend.collect_raw(pending.token) if pending.raw else self.backend.collect(pending.token)
        h, w = pending.size
        maps = [np.ascontiguousarray(out[k, :h, :w]) for k in range(pending.n)]
        if pending.shape is not None and pending.shape != (h, w):
            maps = [resize(m, pending.shape, nearest=True) for m in maps]
        return maps

    def classes(self, inputs: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Class maps of same-shape inputs in one batch; resized to the raw frames' ``shape`` when the frames were
        rescaled."""
        return self.collect(self.submit(inputs, shape))

    # -- nuclei out ---------------------------------------------------------------------------------------------------
    def filtered(self, classes: np.ndarray, raw: np.ndarray,
                 rescale: tuple[float, float] | None = None) -> np.ndarray:
        """The class map after the object filter of the post-processing (``classes`` itself when it has none or
        nothing changes). ``rescale``: the frame's ``Frame.rescale``, when known (the filter then reads the raw frame
        directly)."""
        if not self.post.filters:
            return classes
        if rescale is None and raw.dtype in RAW_DTYPES:
            rescale = normalization_range(raw, self.norm)
        image = raw if rescale is not None else normalize(raw, self.norm)
        return filter_classes(classes, image, self.post, rescale)

    def instances(self, classes: np.ndarray, raw: np.ndarray,
                  rescale: tuple[float, float] | None = None) -> np.ndarray:
        """Instance labels (int32) of a class map of the raw frame ``raw`` (``rescale`` as for ``filtered``)."""
        return instances_from_classes(self.filtered(classes, raw, rescale), **self.post.instance_args)

    def measure(self, classes: np.ndarray, raw: np.ndarray, objects: bool, labels: bool, micronucleus_area: int,
                rescale: tuple[float, float] | None = None, channel: str = NUCLEI,
                markers: dict[str, tuple[np.ndarray, tuple | None]] | None = None,
                ) -> tuple[np.ndarray | None, dict, pl.DataFrame | None]:
        """Nuclei of a class map measured on the raw frame (the ``channel`` named) in one pass (the fused kernels):
        the label image (None unless ``labels``), the image-table values and, with ``objects``, the per-nucleus
        table. ``markers``: the field's other channels (named: the raw frame and its illumination correction or
        None), measured in the same nuclei (``measure_channel``); with them the nuclei channel's own frame mean, and
        per nucleus its min and median intensity, are added."""
        classes = self.filtered(classes, raw, rescale)
        # with markers, the nuclei channel's own frame mean, min and median are measured too (kernels/intensity.py)
        others = {channel: (raw, None), **markers} if markers is not None else None
        return segment_frame(classes, raw, micronucleus_area=micronucleus_area, channel=channel, objects=objects,
                             label_image=labels, others=others, **self.post.instance_args)
