"""U-Net for 3-class nuclei segmentation (0 background, 1 interior, 2 boundary), its export head, and its training
checkpoints (loading one, and the model card it gets).

The network definition the trainer trains and the torch backend runs from a checkpoint: one module both import, so
the engine never imports the trainer. Needs torch (the ``[torch]`` extra).

The seed lab's network: 1-channel input, 3 down-sampling levels (64-128-256-512), batch norm, up-sampling +
concatenation, a 1x1 convolution to 3 classes. Here depth, width and normalization are parameters, so the same code
covers the lab's U-Net (depth 3, base 64) and the small CPU-friendly one shipped with the package.

``scale = 0.5`` runs the U-Net on the 2x2-averaged input and bilinearly up-samples its last features back to full
resolution, inside the network: input and output stay full-size (the engine sees an ordinary model), while the
compute drops about 4x and each level sees twice the context. Down-sampling loses what micronuclei and exact borders
need, so ``refine > 0`` adds a full-resolution branch (``refine_convs`` 3x3 convolutions, default 2,
with ``refine`` channels on the input) whose features join the up-sampled ones in the final 1x1 classifier.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.postprocess import PostProcessing
from nucleiscreen.simulate import PIXEL_SIZE_UM

CLASSES = ["background", "interior", "boundary"]


@dataclass
class UNetConfig:
    depth: int = 3  # number of 2x down-samplings; the input must be a multiple of 2**depth
    base: int = 16  # channels of the first level, doubled at each level
    norm: str = "batch"  # batch | group | none
    in_channels: int = 1
    classes: int = 3
    scale: float = 1.0  # 1.0, or 0.5: the U-Net runs at half resolution inside the network
    refine: int = 0  # channels of the full-resolution refinement branch (0: none)
    refine_convs: int = 2  # its 3x3 convolutions (its receptive field is 2 * refine_convs + 1 px)

    def __post_init__(self):
        if self.scale not in (1.0, 0.5):
            raise ValueError(f"scale must be 1.0 or 0.5, got {self.scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def multiple(self) -> int:
        return 2**self.depth * (2 if self.scale == 0.5 else 1)

    @property
    def widths(self) -> list[int]:
        """Channels per level, the bottleneck last."""
        return [self.base * 2**i for i in range(self.depth + 1)]


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use batch, group or none")


class ConvBlock(nn.Sequential):
    """``convs`` (default two) 3x3 convolutions, each followed by normalization and ReLU."""

    def __init__(self, cin: int, cout: int, norm: str, convs: int = 2):
        layers = []
        for i in range(convs):
            layers += [nn.Conv2d(cout if i else cin, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Encoder(nn.Module):
    """The contracting path shared by the U-Net and the HoVer-style model: ``depth`` levels of a ConvBlock then 2x2
    max-pooling, then the bottleneck block. Returns the bottleneck features and the skips, finest first."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        widths = cfg.widths
        self.down = nn.ModuleList(ConvBlock(cin, cout, cfg.norm)
                                  for cin, cout in zip([cfg.in_channels, *widths[:-2]], widths[:-1]))
        self.bottom = ConvBlock(widths[-2], widths[-1], cfg.norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return self.bottom(x), skips


class Decoder(nn.Module):
    """The expanding path: up-convolution, concatenation with the skip, ConvBlock, level by level to full width."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        levels = list(reversed(cfg.widths[:-1]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in levels)
        self.merge = nn.ModuleList(ConvBlock(w * 2, w, cfg.norm) for w in levels)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    """Encoder of ``depth`` max-pooled levels, a bottleneck, a decoder with skip concatenations; returns logits."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.refine = ConvBlock(cfg.in_channels, cfg.refine, cfg.norm, cfg.refine_convs) if cfg.refine else None
        self.head = nn.Conv2d(cfg.base + cfg.refine, cfg.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = x
        if self.cfg.scale != 1.0:
            x = F.avg_pool2d(x, 2)
        x = self.decoder(*self.encoder(x))
        if self.cfg.scale != 1.0:
            x = F.interpolate(x, size=full.shape[-2:], mode="bilinear", align_corners=False)
        if self.refine is not None:
            x = torch.cat([x, self.refine(full)], dim=1)
        return self.head(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads checkpoints written before the encoder and decoder were modules of their own (``down.0...``,
        ``bottom...``, ``up.0...``, ``merge.0...`` at the top level)."""
        renamed = {}
        for key, value in state_dict.items():
            first = key.split(".", 1)[0]
            prefix = {"down": "encoder.", "bottom": "encoder.", "up": "decoder.", "merge": "decoder."}.get(first, "")
            renamed[prefix + key] = value
        return super().load_state_dict(renamed, strict=strict, assign=assign)


TTA_CHOICES = (1, 2, 4, 8)


def _quarter_turns(x: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.rot90(x, k, dims=(-2, -1))`` from transposes and flips, which ONNX has (it has no rot90)."""
    k %= 4
    if k == 1:
        return torch.flip(x.transpose(-2, -1), dims=(-2,))
    if k == 2:
        return torch.flip(x, dims=(-2, -1))
    if k == 3:
        return torch.flip(x.transpose(-2, -1), dims=(-1,))
    return x


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two axes: ``k % 4`` quarter turns, after a left-right
    flip when ``k >= 4``; ``inverse=True`` undoes it."""
    if inverse:
        x = _quarter_turns(x, -k)
        return torch.flip(x, dims=(-1,)) if k >= 4 else x
    x = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return _quarter_turns(x, k)


def class_argmax(scores: torch.Tensor, boundary_bias: float = 0.0) -> torch.Tensor:
    """uint8 N x H x W class map from N x 3 x H x W logits (or log-probabilities), with ``boundary_bias`` added to
    the boundary's (see ``ExportHead``)."""
    if boundary_bias:
        scores = torch.cat([scores[:, :2], scores[:, 2:] + boundary_bias], dim=1)
    return torch.argmax(scores, dim=1).to(torch.uint8)


class ExportHead(nn.Module):
    """What the ONNX file computes: ``classes`` = argmax over the logits as uint8 (so a GPU ships back 1 byte per
    pixel, not 3 floats), optionally also the softmax ``probabilities``.

    ``boundary_bias`` is added to the boundary logit before the argmax (the probabilities stay the network's own).
    The training loss weights boundary pixels 10x, which inflates the network's boundary odds about 10x (a bias of
    -log 10 = -2.3 undoes it): its argmax draws the band wider than the target and cuts bright textured nuclei with
    boundary streaks, each of which becomes a second seed. The trainer calibrates the bias on training frames.

    ``tta`` > 1 is test-time augmentation inside the graph: the softmax is averaged over ``tta`` transforms of
    ``dihedral`` (2: the identity and the left-right flip, 0 and 4; 4: the quarter turns, 0-3; 8: all), each computed
    on the transformed input and transformed back; it costs ``tta`` forward passes; the bias then applies to the log
    of the averaged probabilities."""

    def __init__(self, net: nn.Module, probabilities: bool = False, tta: int = 1, boundary_bias: float = 0.0):
        super().__init__()
        if tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {TTA_CHOICES}, got {tta}")
        self.net = net
        self.probabilities = probabilities
        self.transforms = {1: [0], 2: [0, 4], 4: [0, 1, 2, 3], 8: list(range(8))}[tta]
        self.boundary_bias = float(boundary_bias)

    def forward(self, image: torch.Tensor):
        if len(self.transforms) == 1:
            logits = self.net(image)
            classes = class_argmax(logits, self.boundary_bias)
            return (classes, torch.softmax(logits, dim=1)) if self.probabilities else classes
        probs = sum(dihedral(torch.softmax(self.net(dihedral(image, k)), dim=1), k, inverse=True)
                    for k in self.transforms) / len(self.transforms)
        scores = torch.log(probs.clamp_min(1e-6)) if self.boundary_bias else probs
        classes = class_argmax(scores, self.boundary_bias)
        return (classes, probs) if self.probabilities else classes


# --- training checkpoints -----------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> tuple[UNet, dict]:
    """The network and the training configuration stored in a ``best.pt``/``last.pt`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "model" not in ck or "config" not in ck:
        raise UserError(f"{path} is not a nucleiscreen checkpoint (no model/config entries)")
    if ck["config"].get("arch", "unet") != "unet":
        raise UserError(f"{path} is a {ck['config']['arch']} model; export writes U-Net class-map models, the "
                        "engine has no post-processing for the HoVer-style outputs")
    net = UNet(UNetConfig(**ck["config"]["model"]))
    net.load_state_dict(ck["model"])
    return net.eval(), ck


def boundary_bias(ck: dict) -> float:
    """The calibrated bias on the boundary logit of a checkpoint (0 for checkpoints calibrated before it existed)."""
    return float(ck.get("postprocessing", {}).get("boundary_bias", 0.0))


def model_card(ck: dict, dtype: str, tta: int = 1) -> dict:
    cfg = ck["config"]
    model = UNetConfig(**cfg["model"])
    bias = boundary_bias(ck)
    return {
        "format": 1,
        "architecture": "unet",
        "model": model.to_dict(),
        "input": {"name": "image", "dtype": dtype, "layout": "NCHW", "channels": 1},
        "outputs": {"classes": "uint8 NxHxW argmax class map" +
                    (f" (boundary logit {bias:+g} inside the graph)" if bias else "")},
        "classes": CLASSES,
        "spatial_multiple": model.multiple,
        "test_time_augmentation": tta,  # dihedral transforms averaged inside the graph (1: none)
        "pixel_size_um": PIXEL_SIZE_UM,
        # the typical nucleus area (px) of the model's output on its training frames: what --pixel-size auto matches
        "nucleus_area_px": ck.get("postprocessing", {}).get("nucleus_area_px"),
        "normalization": cfg["norm"],
        # the calibrated post-processing (kernels/postprocess.py), else the validation's of the training config
        "postprocessing": {"method": "instances_from_classes", "boundary_width": cfg.get("boundary_width", 2),
                           "solid_area": cfg.get("solid_area", 0),
                           **PostProcessing.from_card({**cfg, **cfg.get("post", {}),
                                                       **ck.get("postprocessing", {})}).to_card(),
                           "boundary_bias": bias},  # applied inside the graph, before the ArgMax (ExportHead)
        "training_data": {"sources": cfg["train"], "simulated_fraction": cfg["sim_fraction"], "steps": ck.get("step"),
                          "init": cfg.get("init"),  # the checkpoint fine-tuned, or those whose weights were averaged
                          "teacher": cfg.get("teacher"),  # the model file distilled from (trainer/distill.py)
                          "validation": cfg.get("val")},
        "validation_metrics": ck.get("val", {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
