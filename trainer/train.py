"""The training loop: plain PyTorch, one file, configuration as a dataclass with defaults.

AdamW with a warm-up and cosine learning-rate schedule, softmax cross-entropy weighted per class (the lab used
1 : 1 : 10 for background : interior : boundary) plus an optional soft Dice term, channels-last with mixed precision
(float16 on CUDA, bfloat16 on CPUs that run it natively: about 4x the steps/s of float32 on this project's AMX Xeon), a
checkpoint every validation (``last.pt``, and ``best.pt`` by ``select_by``: the mean validation F1 over IoU 0.5-0.95 by
default, or F1 at IoU 0.5), a CSV log, and resume from
``last.pt``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.contrast import filter_faint
from nucleiscreen.kernels.instances import DEFAULT_MIN_AREA, instances_from_classes
from nucleiscreen.kernels.normalize import Normalization
from nucleiscreen.network import UNet, UNetConfig, class_argmax
from nucleiscreen.simulate import MEDIAN_NUCLEUS_AREA
from nucleiscreen.trainer.data import CropStream, Deformation, Sample, Target, load_folder
from nucleiscreen.trainer.hover import HoVerNet, hover_instances, hover_loss, hv_maps
from nucleiscreen.trainer.metrics import Counts, match

ARCHITECTURES = ("unet", "hover")
CALIBRATION_IMAGES = 50  # post-processing is calibrated on (up to) this many frames of the first training source


@dataclass
class DataSource:
    path: str
    weight: float = 1.0
    rescale: bool = False  # rescale images so their median nucleus area matches the CX7's (for DSB 2018)
    limit: int | None = None


@dataclass
class TrainConfig:
    out: str = "runs/train"
    train: list[DataSource] = field(default_factory=list)
    val: str | None = None
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
    # several checkpoints' (weight averaging); resume from last.pt wins; with steps 0 the start is the model
    select_by: str = "f1_mean"  # best.pt: f1_mean (mean validation F1 over IoU 0.5-0.95) or f1_0.50
    max_grow: int = 3  # U-Net post-processing growth of seeds through boundary pixels during validation; the final
    # value is calibrated on training images after training (see calibrate_postprocessing) and goes into the model card
    min_contrast: float = 0.0  # U-Net post-processing: small objects fainter than this are erased during validation
    # (kernels/contrast.py; 0: none); calibrated like max_grow
    min_area: int = DEFAULT_MIN_AREA  # U-Net post-processing: objects under this many pixels are dropped during
    # validation; calibrated like max_grow
    boundary_bias: float = 0.0  # added to the boundary logit before the argmax during validation (ExportHead);
    # calibrated like max_grow
    min_edge_area: int = 0  # U-Net post-processing: objects touching the frame's edge with fewer pixels are erased
    # during validation (kernels/contrast.py; 0: none); calibrated like max_grow
    grow_area: int = 0  # U-Net post-processing: objects under this many pixels grow into the bright pixels of their
    # outer ring during validation (kernels/contrast.py; 0: none); calibrated like max_grow
    grow_level: float = 0.5  # ... the pixels at least this fraction of the way from the background to the object's
    # mean; calibrated with grow_area
    val_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 (AMX / AVX-512 BF16)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            if "train" in d:
                d["train"] = [DataSource(**s) if isinstance(s, dict) else DataSource(s) for s in d["train"]]
            if "model" in d:
                d["model"] = UNetConfig(**d["model"])
            if "norm" in d:
                d["norm"] = Normalization.from_dict(d["norm"])
            if "deformation" in d:
                d["deformation"] = Deformation(**d["deformation"])
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
        if d.get("arch", "unet") not in ARCHITECTURES:
            raise UserError(f"unknown arch {d['arch']!r}; use one of {', '.join(ARCHITECTURES)}")
        model = d.get("model", UNetConfig())
        if d.get("arch") == "hover" and (model.scale != 1.0 or model.refine):
            raise UserError("the hover model runs at full resolution: model.scale 1.0 and refine 0 only")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def target(self) -> Target:
        return Target(self.boundary_width, self.solid_area, self.small_area)


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision type for training on ``device``, or None for float32. On the CPU only where bfloat16 runs
    natively (oneDNN uses AMX or AVX-512 BF16; elsewhere it would be slower than float32)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, dice: float,
            small: torch.Tensor | None = None, small_weight: float = 0.0) -> torch.Tensor:
    """Class-weighted cross-entropy (the weighted mean over pixels, as ``F.cross_entropy(weight=...)``), where the
    interior pixels of small objects (``small``) may get their own weight, plus an optional soft Dice term.

    With a 10x boundary weight and an inner 2-px band, a micronucleus of 20-50 px has 1-5 interior pixels that the
    network otherwise learns to call boundary, leaving it without a seed (it is then lost); ``small_weight`` evens that.
    """
    pixel_w = weights[target]
    if small is not None and small_weight > 0:
        pixel_w = torch.where(small, torch.full_like(pixel_w, small_weight), pixel_w)
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    loss = (ce * pixel_w).sum() / pixel_w.sum().clamp_min(1e-6)
    if dice > 0:
        prob = torch.softmax(logits.float(), dim=1)
        onehot = F.one_hot(target, prob.shape[1]).permute(0, 3, 1, 2).float()
        inter = (prob * onehot).sum((0, 2, 3))
        denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        loss = loss + dice * (1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean())
    return loss


@torch.no_grad()
def predict_logits(net: torch.nn.Module, image: np.ndarray, device: torch.device, multiple: int) -> torch.Tensor:
    """Logits (1 x C x H x W) of one normalized image, reflect-padded to the network's multiple and cropped back."""
    h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    x = torch.from_numpy(np.pad(image, ((0, ph), (0, pw)), mode="reflect"))[None, None].to(device)
    return net(x)[:, :, :h, :w]


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    return HoVerNet(cfg.model) if cfg.arch == "hover" else UNet(cfg.model)


def class_map(out: torch.Tensor, boundary_bias: float = 0.0) -> np.ndarray:
    """The uint8 class map of one image's logits (1 x 3 x H x W), as the exported graph computes it."""
    return class_argmax(out, boundary_bias)[0].cpu().numpy()


def to_instances(out: torch.Tensor, arch: str, max_grow: int = 3, image: np.ndarray | None = None,
                 min_contrast: float = 0.0, boundary_bias: float = 0.0, min_area: int = DEFAULT_MIN_AREA,
                 min_edge_area: int = 0, grow_area: int = 0, grow_level: float = 0.5) -> np.ndarray:
    """Instances of one image from the network's output (1 x C x H x W), by the architecture's post-processing."""
    if arch == "hover":
        return hover_instances(out[0].cpu().numpy())
    return unet_instances(class_map(out, boundary_bias), max_grow, image, min_contrast, min_area, min_edge_area,
                          grow_area, grow_level)


def unet_instances(classes: np.ndarray, max_grow: int, image: np.ndarray | None = None,
                   min_contrast: float = 0.0, min_area: int = DEFAULT_MIN_AREA, min_edge_area: int = 0,
                   grow_area: int = 0, grow_level: float = 0.5) -> np.ndarray:
    """The engine's post-processing of a U-Net class map: faint small objects erased when ``min_contrast`` > 0
    (``image``: the normalized input), edge slivers under ``min_edge_area`` px too, objects under ``grow_area`` px
    grown by their bright outer ring (``grow_level``), then ``instances_from_classes`` (objects under ``min_area`` px
    dropped)."""
    grown = {"max_grow": max_grow, "min_area": min_area}
    return instances_from_classes(filter_faint(classes, image, min_contrast, min_edge_area=min_edge_area,
                                               grow_area=grow_area, grow_level=grow_level, **grown), **grown)


GROW_CHOICES = (2, 3, 4, 5, 6, 8)
CONTRAST_CHOICES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
AREA_CHOICES = (4, 10, 15, 20, 25, 30)
EDGE_CHOICES = (0, 20, 25, 30, 35, 40, 50, 60, 80)
GROW_AREA_CHOICES = (0, 50, 100, 200, 300)
GROW_LEVEL_CHOICES = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)
BIAS_CHOICES = (0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0)


@torch.no_grad()
def calibrate_postprocessing(net: torch.nn.Module, samples: list[Sample], device: torch.device,
                             multiple: int) -> dict:
    """The ``boundary_bias`` of the argmax and the ``max_grow`` of ``instances_from_classes`` that together give the
    best mean F1 (IoU 0.5-0.95) on ``samples``, then the ``min_contrast`` of the faint-object filter and the
    ``min_area`` under which objects are dropped that together give the best F1 at IoU 0.5 with them, then the
    ``min_edge_area`` under which objects touching the frame's edge are erased (the slivers of nuclei cut by the
    frame, which the lab did not annotate) that gives the best F1 at IoU 0.5 with all of these; last the
    ``grow_area`` and ``grow_level`` of the growth of small objects into their bright outer ring
    (``kernels/contrast.py``: it changes outlines, hence the mean F1) with all of these.

    The 10x boundary weight of the loss makes the network over-call boundary: its argmax draws the band wider than
    the 2-px target and cuts bright textured nuclei with boundary streaks (two seeds, two objects). A negative bias
    on the boundary logit (about -log 10 undoes the weight) thins both; too much of it opens the band between
    touching nuclei, which then merge. How far seeds grow back through the band decides whether objects come out a
    pixel ring too small or too large (at IoU 0.9 that is the difference between a match and a miss), hence the mean
    F1 over IoU thresholds for these two. The filter and the area limit decide only whether an object is there (a
    network that finds micronuclei also finds faint specks and few-pixel dots the annotators left out), hence the
    detection F1 (scored by the mean F1 they would drop every small object, micronuclei included, since a 20-px spot
    rarely matches at IoU 0.9). All of these are properties of the trained network, so they are measured on
    training images, never on the validation split, and stored with the model."""
    net.eval()
    logits = [predict_logits(net, s.image, device, multiple).float().cpu() for s in samples]

    def score(threshold: float | None, bias: float, max_grow: int, min_contrast: float = 0.0,
              min_area: int = DEFAULT_MIN_AREA, min_edge_area: int = 0, grow: tuple[int, float] = (0, 0.5)) -> float:
        """F1 at ``threshold`` (None: the mean over thresholds) of ``samples`` with this post-processing."""
        counts = Counts()
        for s, out in zip(samples, logits):
            counts.add(match(s.labels, unet_instances(class_map(out, bias), max_grow, s.image, min_contrast,
                                                      min_area, min_edge_area, *grow)))
        return round(counts.f1(threshold) if threshold is not None else counts.f1_mean(), 4)

    def best(scores: dict):  # ties go to the values nearest zero (the least change)
        return max(scores, key=lambda k: (scores[k], *(-abs(v) for v in np.atleast_1d(k))))

    grid = {(b, g): score(None, b, g) for b in BIAS_CHOICES for g in GROW_CHOICES}
    by_bias = {b: max(grid[b, g] for g in GROW_CHOICES) for b in BIAS_CHOICES}
    b = best(by_bias)
    grow = {g: grid[b, g] for g in GROW_CHOICES}
    g = best(grow)
    detection = {(c, a): score(0.5, b, g, c, a) for c in CONTRAST_CHOICES for a in AREA_CHOICES}
    c, a = best(detection)
    edge = {e: score(0.5, b, g, c, a, e) for e in EDGE_CHOICES}
    e = best(edge)
    growth = {(0, 0.5): score(None, b, g, c, a, e)}
    growth.update({(ga, gl): score(None, b, g, c, a, e, (ga, gl)) for ga in GROW_AREA_CHOICES[1:]
                   for gl in GROW_LEVEL_CHOICES})
    ga, gl = max(growth, key=lambda k: (growth[k], -k[0], k[1]))  # ties: the least growth
    return {"boundary_bias": b, "f1_mean_by_boundary_bias": by_bias, "max_grow": g, "f1_mean_by_max_grow": grow,
            "min_contrast": c, "min_area": a,
            "f1_0.50_by_min_contrast_and_area": {ci: {ai: detection[ci, ai] for ai in AREA_CHOICES}
                                                 for ci in CONTRAST_CHOICES},
            "min_edge_area": e, "f1_0.50_by_min_edge_area": edge,
            "grow_area": ga, "grow_level": gl,
            "f1_mean_without_growth": growth[0, 0.5],
            "f1_mean_by_grow_area_and_level": {ai: {li: growth[ai, li] for li in GROW_LEVEL_CHOICES}
                                               for ai in GROW_AREA_CHOICES[1:]},
            "images": len(samples)}


def batch_loss(out: torch.Tensor, cls: torch.Tensor, small: torch.Tensor, labels: np.ndarray,
               weights: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.arch == "hover":
        hv = torch.from_numpy(np.stack([hv_maps(lab) for lab in labels])).to(out.device)
        return hover_loss(out, cls > 0, hv)
    return loss_fn(out, cls, weights, cfg.dice, small, cfg.small_weight)


def load_weights(path: str, cfg: TrainConfig, net: torch.nn.Module) -> dict:
    """The model weights of a checkpoint, checked against the configured architecture.

    A checkpoint of the same U-Net without the refinement branch (``refine`` 0) also starts a network that has one:
    its weights are taken over, the branch keeps ``net``'s initial weights and the classifier gets zero weights for
    the branch's features, so training starts from exactly the checkpoint's predictions."""
    if not Path(path).is_file():
        raise UserError(f"init checkpoint not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    theirs = ck.get("config", {})
    if "model" not in theirs:
        return ck["model"]
    mine = (UNetConfig(**theirs["model"]), theirs.get("arch", "unet"))
    if mine == (cfg.model, cfg.arch):
        return ck["model"]
    grows = cfg.arch == "unet" and mine[1] == "unet" and mine[0].refine == 0 and \
        replace(mine[0], refine=cfg.model.refine, refine_convs=cfg.model.refine_convs) == cfg.model
    if not grows:
        raise UserError(f"init checkpoint {path} is a {theirs.get('arch', 'unet')} {theirs['model']} network; the "
                        f"configuration asks for a {cfg.arch} {cfg.model.to_dict()}")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.update({k: v for k, v in ck["model"].items() if k != "head.weight"})
    head = torch.zeros_like(state["head.weight"])
    head[:, :cfg.model.base] = ck["model"]["head.weight"]
    state["head.weight"] = head
    return state


def initial_weights(init: str | list[str], cfg: TrainConfig, net: torch.nn.Module) -> dict:
    """The weights ``init`` names: one checkpoint's (``load_weights``), or the mean of several checkpoints' weights.

    Averaging the weights of networks fine-tuned from one start (other seeds, other losses) lands between their
    minima, where the loss is usually lower than at either ("model soups", Wortsman et al. 2022), at the inference
    cost of one network; networks from different starts do not average (their units are not aligned). BatchNorm
    running statistics are averaged like the weights."""
    states = [load_weights(p, cfg, net) for p in ([init] if isinstance(init, str) else init)]
    if len(states) == 1:
        return states[0]
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def with_postprocessing(cfg: TrainConfig, post: dict) -> TrainConfig:
    """``cfg`` validating with a checkpoint's calibrated post-processing (``post``); a setting the checkpoint predates
    keeps the configuration's value."""
    return replace(cfg, **{k: post.get(k, getattr(cfg, k)) for k in ("max_grow", "min_contrast", "boundary_bias",
                                                                     "min_area", "min_edge_area", "grow_area",
                                                                     "grow_level")})


def validate(net: torch.nn.Module, samples: list[Sample], device: torch.device, cfg: TrainConfig) -> dict:
    """Loss, F1 at IoU thresholds and the lab's Jaccard of whole validation images."""
    net.eval()
    counts = Counts()
    weights = torch.tensor(cfg.class_weights, device=device)
    losses = []
    for s in samples:
        out = predict_logits(net, s.image, device, cfg.model.multiple)
        target = torch.from_numpy(s.classes.astype(np.int64))[None].to(device)
        small = torch.from_numpy(s.small)[None].to(device)
        losses.append(float(batch_loss(out, target, small, s.labels[None], weights, cfg)))
        counts.add(match(s.labels, to_instances(out, cfg.arch, cfg.max_grow, s.image, cfg.min_contrast,
                                                 cfg.boundary_bias, cfg.min_area, cfg.min_edge_area, cfg.grow_area,
                                                 cfg.grow_level)))
    net.train()
    out = counts.summary()
    out["loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


def _last_seconds(log_path: Path) -> float:
    rows = log_path.read_text().splitlines()[1:]
    try:
        return float(rows[-1].rsplit(",", 1)[1]) if rows else 0.0
    except (IndexError, ValueError):
        return 0.0


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True) -> Path:
    """Train the configured model (U-Net or HoVer-style); returns the folder holding ``best.pt``, ``last.pt``,
    ``log.csv`` and ``config.json``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # Rescaled sources get the median nucleus area of the CX7 frames the network is for.
    sources = [(load_folder(s.path, cfg.norm, MEDIAN_NUCLEUS_AREA if s.rescale else None, cfg.target, s.limit),
                s.weight) for s in cfg.train]
    val = load_folder(cfg.val, cfg.norm, None, cfg.target) if cfg.val else []
    stream = CropStream(sources, cfg.crop, cfg.batch, cfg.sim_fraction, cfg.norm, cfg.seed, cfg.target,
                        cfg.deformation)

    net = build_model(cfg)
    if cfg.init and not (resume and (out / "last.pt").exists()):  # a resumed run has its own weights
        net.load_state_dict(initial_weights(cfg.init, cfg, net))
    net = net.to(device).to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(device, cfg.amp)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, best = 0, -1.0
    last = out / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, best = ck["step"], ck["best"]
        if ck.get("config", {}).get("select_by", "f1_mean") != cfg.select_by:
            best = -1.0  # best.pt was picked by another metric: the next validation replaces it
        stream.rng = np.random.default_rng([cfg.seed, step])
    weights = torch.tensor(cfg.class_weights, device=device)

    log_path = out / "log.csv"
    new_log = not log_path.exists() or step == 0
    if not new_log:  # rows logged after the checkpoint we resume from (a kill between the two) are dropped
        lines = log_path.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= step]
        log_path.write_text("".join(lines[:1] + kept))
    # The seconds column counts training time over all sessions: a resumed run goes on from the last logged value.
    earlier = 0.0 if new_log else _last_seconds(log_path)
    log = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "train_loss", "val_loss", "val_f1_0.5", "val_f1_mean", "val_jaccard_lab", "lr",
                         "seconds"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="train")
    t0 = time.time() - earlier
    running = []
    if cfg.steps == 0 and not (out / "best.pt").exists():  # nothing to train: the start (an average) is the model
        torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "step": 0,
                    "val": validate(net, val, device, cfg) if val else {}}, out / "best.pt")
    net.train()
    while step < cfg.steps:
        x, y, small, labels = stream.next()
        x, y, small = (t.to(device, non_blocking=True) for t in (x, y, small))
        x = x.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = batch_loss(net(x), y, small, labels, weights, cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        running.append(loss.item())
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}", best=f"{max(best, 0):.3f}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            nan = float("nan")
            metrics = validate(net, val, device, cfg) if val else {"loss": nan, "f1": {"0.50": nan}, "f1_mean": nan,
                                                                     "jaccard_lab": nan}
            f1 = metrics["f1"]["0.50"]
            score = metrics["f1_mean"] if cfg.select_by == "f1_mean" else f1
            writer.writerow([step, f"{np.mean(running):.4f}", f"{metrics['loss']:.4f}", f1, metrics["f1_mean"],
                             metrics["jaccard_lab"], f"{sched.get_last_lr()[0]:.2e}", f"{time.time() - t0:.0f}"])
            log.flush()
            running = []
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "best": best, "config": cfg.to_dict()}
            if not val or score > best:
                best = score if val else best
                state["best"] = best
                torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "step": step, "val": metrics},
                           out / "best.pt")
            torch.save(state, out / "last.tmp")
            (out / "last.tmp").replace(last)
            if bar is not None:
                bar.write(f"step {step}: val F1@0.5 {f1:.3f}, F1 mean {metrics['f1_mean']:.3f}, "
                          f"Jaccard {metrics['jaccard_lab']:.3f}, val loss {metrics['loss']:.3f}")
    if bar is not None:
        bar.close()
    log.close()
    best_path = out / "best.pt"
    if cfg.arch == "unet" and sources and best_path.exists():
        ck = torch.load(best_path, map_location=device, weights_only=False)
        # Calibrated once, on the first (the screen's own) training source; again when re-running a finished run
        # whose checkpoint predates the calibration of the growth of small objects.
        if "grow_area" not in ck.get("postprocessing", {}):
            net.load_state_dict(ck["model"])
            ck["postprocessing"] = calibrate_postprocessing(net, sources[0][0][:CALIBRATION_IMAGES], device,
                                                            cfg.model.multiple)
            if val:  # the card's validation figures are those of the post-processing the engine will apply
                post = ck["postprocessing"]
                ck["val"] = validate(net, val, device, with_postprocessing(cfg, post))
            torch.save(ck, best_path)
            if bar is not None:
                print(f"post-processing calibrated on training images: {ck['postprocessing']}")
    return out
