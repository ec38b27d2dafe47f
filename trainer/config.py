"""The training configuration: plain values with defaults, read from a JSON file (``trainer/configs/``)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.normalize import Normalization
from nucleiscreen.kernels.postprocess import PostProcessing
from nucleiscreen.network import UNetConfig
from nucleiscreen.trainer.data import Deformation, Target

ARCHITECTURES = ("unet", "hover")
_POST_FIELDS = {f.name for f in fields(PostProcessing)}


@dataclass
class DataSource:
    """A folder of annotated frames (``images/`` + ``masks/``) and how the training uses it."""

    path: str
    weight: float = 1.0
    rescale: bool = False  # resize each image so its typical nucleus area is the model's (the automatic scale's
    # normalization: kernels/measure.typical_area against the card's nucleus_area_px; for DSB 2018's mixed sizes)
    limit: int | None = None
    match: str | None = None  # only the images whose stem this regular expression finds (re.search), e.g. "^[4-9a-f]"
    # for the DSB 2018 images outside the held-out split
    labels: bool = True  # learn its annotations (false: only the teacher's soft targets, as for unannotated frames)
    distill: bool = True  # with a teacher, learn the teacher's soft targets on its crops too

    def __post_init__(self):
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match {self.match!r} is not a regular expression: {exc}") from None


@dataclass
class TrainConfig:
    out: str = "runs/train"
    train: list[DataSource] = field(default_factory=list)
    val: list[DataSource] = field(default_factory=list)  # validation folders (a path, a source or a list): best.pt
    # by the mean of their select_by figures; the first one's are the log's val_ columns
    sim_fraction: float = 0.3
    arch: str = "unet"  # unet (3-class map) | hover (HoVer-Net-style NP + HV branches, trainer/hover.py)
    model: UNetConfig = field(default_factory=UNetConfig)
    norm: Normalization = field(default_factory=Normalization)
    crop: int = 256
    deformation: Deformation = field(default_factory=Deformation)  # zoom, rotation, elastic (trainer/data.py)
    batch: int = 8
    steps: int = 2000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    class_weights: tuple[float, float, float] = (1.0, 1.0, 10.0)
    dice: float = 0.0
    boundary_width: int = 2
    solid_area: int = 0  # objects under this many pixels are all interior in the target (no band; 0: none)
    small_area: int = 100  # objects under this many pixels are micronuclei/fragments ...
    small_weight: float = 10.0  # ... whose few interior pixels (their seeds) get this loss weight (0: class weight)
    init: str | list[str] | None = None  # start from this checkpoint's weights (fine-tuning), or from the mean of
    # several checkpoints' (weight averaging), or train a model file's own graph (a shipped name or an .onnx path:
    # its batch norms stay folded, as in ``train --finetune``); resume from last.pt wins; with steps 0 the start is
    # the model
    teacher: str | None = None  # distillation: a model file (shipped name or ONNX path) whose soft class
    # probabilities the network also learns, on every crop (trainer/distill.py)
    distill: float = 1.0  # the weight of that term against the annotated loss
    keep_checkpoints: bool = False  # also keep each validation's weights as step<N>.pt (for an average of a run's
    # last checkpoints, as unet-tiny-soup.json takes them)
    select_by: str = "f1_mean"  # best.pt: f1_mean (mean validation F1 over IoU 0.5-0.95) or f1_0.50
    post: PostProcessing = field(default_factory=lambda: PostProcessing(max_grow=3))  # the U-Net's post-processing
    # during validation (kernels/postprocess.py; a config may also give its settings as top-level keys, max_grow
    # etc.); after training the final settings are calibrated on training images (calibrate_postprocessing) and go
    # into the model card
    boundary_bias: float = 0.0  # added to the boundary logit before the argmax during validation (ExportHead);
    # calibrated like the post-processing
    val_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 (AMX / AVX-512 BF16)

    def __post_init__(self):
        val = self.val if isinstance(self.val, list) else [self.val] if self.val else []
        self.val = [_source(v) for v in val]

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        known = set(cls.__dataclass_fields__) | _POST_FIELDS
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            if "train" in d:
                d["train"] = [_source(s) for s in d["train"]]
            if "model" in d:
                d["model"] = UNetConfig(**d["model"])
            if "norm" in d:
                d["norm"] = Normalization.from_dict(d["norm"])
            if "deformation" in d:
                d["deformation"] = Deformation(**d["deformation"])
            flat = {k: d.pop(k) for k in [k for k in d if k in _POST_FIELDS]}  # max_grow, ... as top-level keys
            if flat or "post" in d:
                d["post"] = PostProcessing(**{**asdict(cls().post), **d.get("post", {}), **flat})
        except (TypeError, ValueError) as exc:  # an unknown or mistyped key inside train/model/norm/deformation
            raise UserError(f"training option: {exc}") from None
        init = d.get("init")
        if init is not None and not (isinstance(init, str) or (isinstance(init, list) and init
                                                              and all(isinstance(i, str) for i in init))):
            raise UserError(f"init must be a checkpoint path or a list of them, not {init!r}")
        if "class_weights" in d:
            d["class_weights"] = tuple(d["class_weights"])
        if d.get("select_by", "f1_mean") not in ("f1_mean", "f1_0.50"):
            raise UserError(f"select_by must be f1_mean or f1_0.50, not {d['select_by']!r}")
        if d.get("teacher") is not None and d.get("arch", "unet") != "unet":
            raise UserError("a teacher (distillation) needs arch unet: its class probabilities are the targets")
        if d.get("arch", "unet") not in ARCHITECTURES:
            raise UserError(f"unknown arch {d['arch']!r}; use one of {', '.join(ARCHITECTURES)}")
        model = d.get("model", UNetConfig())
        if d.get("arch") == "hover" and (model.scale != 1.0 or model.refine):
            raise UserError("the hover model runs at full resolution: model.scale 1.0 and refine 0 only")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:  # a mistyped validation source
            raise UserError(f"training option: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def onnx_init(self) -> str | None:
        """The model file whose graph is trained (``init`` naming a shipped model or an .onnx file), or None."""
        from nucleiscreen.engine.model import shipped_models

        if isinstance(self.init, str) and (self.init.endswith(".onnx") or self.init in shipped_models()):
            return self.init
        return None

    @property
    def target(self) -> Target:
        return Target(self.boundary_width, self.solid_area, self.small_area)


def _source(s: str | dict | DataSource) -> DataSource:
    return s if isinstance(s, DataSource) else DataSource(**s) if isinstance(s, dict) else DataSource(s)


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from a file, or a one-line ``UserError`` naming the file (``what``: "training config", ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}), not a {type(data).__name__}")
    return data


def with_postprocessing(cfg: TrainConfig, post: dict) -> TrainConfig:
    """``cfg`` validating with a checkpoint's calibrated post-processing (``post``, the model card's form); a setting
    the checkpoint predates keeps the configuration's value."""
    return replace(cfg, post=cfg.post.with_overrides({k: post.get(k) for k in _POST_FIELDS}),
                   boundary_bias=post.get("boundary_bias", cfg.boundary_bias))
