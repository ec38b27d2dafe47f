"""Training data: annotated image/mask folders and simulated frames -> normalized crops and 3-class targets.

A folder holds ``images/<stem>.(png|tif|tiff)`` and ``masks/<stem>.tif`` (instance ids, 0 background), the layout of
../shared/data. Every image goes through the engine's own ``normalize`` (one implementation for training and
inference) and every mask through ``classes_from_instances`` (one definition of the target). Images whose nuclei are
much smaller than the CX7's (the DSB 2018 set mixes magnifications) can be rescaled so their median nucleus area
matches ``target_area``; the network is then trained at one pixel size, the screen's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from nucleiscreen.engine.readers import IMAGE_SUFFIXES, read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import typical_area
from nucleiscreen.kernels.normalize import Normalization, normalize
from nucleiscreen.kernels.targets import classes_from_instances
from nucleiscreen.simulate import NUCLEI_PER_FRAME, FrameSpec, synth_frame


@dataclass
class Sample:
    name: str
    image: np.ndarray  # float32 (H, W) in [0, 1], normalized
    labels: np.ndarray  # int32 (H, W) instance ids
    classes: np.ndarray  # uint8 (H, W) 3-class target
    small: np.ndarray  # bool (H, W): interior pixels of objects under the small-object area (micronuclei)


@dataclass(frozen=True)
class Deformation:
    """Random geometric deformation of annotated training crops (off by default): a zoom, a rotation by any angle and
    a smooth elastic displacement, the augmentation the U-Net paper relied on to learn from a few annotated images.
    The instance labels are warped with the image (nearest neighbour) and the targets are made again from them, so the
    class map keeps its exact band width instead of being interpolated."""

    p: float = 0.0  # probability that a crop is deformed
    zoom: float = 0.15  # zoom factor drawn log-uniformly from [1 / (1 + zoom), 1 + zoom]
    elastic: float = 6.0  # standard deviation (pixels) of the displacement at the control points
    grid: int = 4  # control points per side: the displacement is their bicubic interpolation
    margin: int = 16  # pixels cropped around the crop first and dropped after warping (no edge effects)

    def __post_init__(self):
        if not 0 <= self.p <= 1 or self.zoom < 0 or self.elastic < 0 or self.grid < 2 or self.margin < 0:
            raise ValueError(f"deformation needs 0 <= p <= 1, zoom >= 0, elastic >= 0, grid >= 2, margin >= 0: {self}")


@dataclass(frozen=True)
class Target:
    """How instance masks become training targets."""

    width: int = 2  # the boundary band of ``classes_from_instances``
    solid_area: int = 0  # objects under this many px are all interior (``classes_from_instances``)
    small_area: int = 100  # the interior pixels of objects under this many px are marked ``small`` (for the loss)


def small_interior(labels: np.ndarray, classes: np.ndarray, small_area: int) -> np.ndarray:
    """Interior pixels of objects with fewer than ``small_area`` pixels: a micronucleus keeps only a few interior
    pixels inside its boundary band, and the loss up-weights them so the network learns their seeds."""
    areas = np.bincount(labels.ravel())
    small = areas < small_area
    small[0] = False
    return small[labels] & (classes == 1)


def make_sample(name: str, image: np.ndarray, labels: np.ndarray, target: Target) -> Sample:
    classes = classes_from_instances(labels, target.width, target.solid_area)
    return Sample(name, image, labels, classes, small_interior(labels, classes, target.small_area))


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of an annotated folder with ``images/`` and ``masks/`` subfolders, paired by stem."""
    root = Path(folder)
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise UserError(f"{root} must hold images/ and masks/ subfolders (masks/<stem>.tif for images/<stem>.png)")
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    pairs = [(p, masks[p.stem]) for p in sorted((root / "images").iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks]
    if not pairs:
        raise UserError(f"no image/mask pairs with matching names under {root}")
    return pairs


def _rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    img = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="bilinear", align_corners=False)
    lab = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size, mode="nearest")
    return img[0, 0].numpy(), lab[0, 0].numpy().astype(np.int32)


def load_folder(
    folder: str | Path,
    norm: Normalization = Normalization(),
    target_area: float | None = None,
    target: Target = Target(),
    limit: int | None = None,
    match: str | None = None,
) -> list[Sample]:
    """Load, normalize and (optionally) rescale an annotated folder; compute the 3-class targets once.

    ``target_area``: each image is resized so that its typical nucleus area (``typical_area``, what the automatic
    scale measures) becomes this, when that moves it by more than 5 % (factors 0.25-4, as the engine's);
    ``match``: only the images whose stem this regular expression finds; ``limit``: the first that many."""
    pairs = [p for p in find_pairs(folder) if match is None or re.search(match, p[0].stem)]
    if not pairs:
        raise UserError(f"no image/mask pairs under {folder} match {match!r}")
    samples = []
    for img_path, mask_path in pairs[:limit]:
        raw = read_frame(img_path)
        labels = read_frame(mask_path).astype(np.int32)
        if raw.shape != labels.shape:
            raise UserError(f"{img_path.name}: image {raw.shape} and mask {labels.shape} differ in size")
        image = normalize(raw, norm)
        area, _ = typical_area([labels]) if target_area is not None else (None, 0)
        if area:
            factor = float(np.clip(np.sqrt(target_area / area), 0.25, 4.0))
            if abs(factor - 1.0) > 0.05:
                image, labels = _rescale(image, labels, factor)
        samples.append(make_sample(img_path.stem, image, labels, target))
    return samples


def simulated_sample(rng: np.random.Generator, size: int, norm: Normalization, target: Target = Target()) -> Sample:
    """One simulated crop with a random density and nucleus size, including empty and near-empty frames."""
    density = NUCLEI_PER_FRAME * float(rng.choice([0.0, 0.05, 0.3, 1.0, 1.6], p=[0.05, 0.1, 0.2, 0.45, 0.2]))
    spec = FrameSpec(nuclei_per_frame=density, area_scale=float(rng.choice([1.0, 1.0, 1.6, 2.3])),
                     brightness=float(rng.uniform(1200, 5000)), offset=float(rng.uniform(100, 600)))
    raw, labels = synth_frame(rng, (size, size), spec)
    labels = labels.astype(np.int32)
    return make_sample("sim", normalize(raw, norm), labels, target)


def random_crop(sample: Sample, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A size x size crop of image, target, small-object mask and labels (zero-padded when the image is smaller)."""
    h, w = sample.image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    planes = [sample.image, sample.classes, sample.small, sample.labels]
    if ph or pw:
        planes = [np.pad(a, ((0, ph), (0, pw))) for a in planes]
        h, w = planes[0].shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return tuple(a[y:y + size, x:x + size] for a in planes)


def augment(img: np.ndarray, *targets: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Flips, 90-degree rotations, intensity scale and gamma, Gaussian noise (the lab used flips, rotations and
    intensity x(1 +- 0.75)); the targets (class map, masks, labels) only follow the geometric ones."""
    k = int(rng.integers(4))
    flip = rng.random() < 0.5
    planes = [np.rot90(a, k) for a in (img, *targets)]
    if flip:
        planes = [a[:, ::-1] for a in planes]
    img = np.clip(planes[0], 0.0, 1.0) ** float(rng.uniform(0.7, 1.4))
    img = img * float(rng.uniform(0.4, 1.6))
    if rng.random() < 0.3:
        img = img + rng.normal(0.0, rng.uniform(0.005, 0.04), img.shape)
    return (np.ascontiguousarray(np.clip(img, 0.0, 1.0), np.float32),
            *(np.ascontiguousarray(a) for a in planes[1:]))


def deform(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
           spec: Deformation) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (bilinear) and ``labels`` (nearest) resampled through one random zoom, rotation and elastic
    displacement about the centre; borders are filled by reflection."""
    h, w = image.shape
    angle = rng.uniform(0.0, 2 * math.pi)
    zoom = math.exp(rng.uniform(-math.log1p(spec.zoom), math.log1p(spec.zoom)))
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
                            torch.arange(w, dtype=torch.float32) - (w - 1) / 2, indexing="ij")
    shift = torch.from_numpy(rng.normal(0.0, spec.elastic, (1, 2, spec.grid, spec.grid)).astype(np.float32))
    dx, dy = F.interpolate(shift, size=(h, w), mode="bicubic", align_corners=True)[0]
    # source pixel of every output pixel, in grid_sample's [-1, 1] coordinates (align_corners=True)
    sx = (cos * xs - sin * ys + dx) / ((w - 1) / 2)
    sy = (sin * xs + cos * ys + dy) / ((h - 1) / 2)
    grid = torch.stack((sx, sy), dim=-1)[None]
    planes = torch.from_numpy(np.stack([image.astype(np.float32), labels.astype(np.float32)]))[:, None]
    img = F.grid_sample(planes[:1], grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    lab = F.grid_sample(planes[1:], grid, mode="nearest", padding_mode="reflection", align_corners=True)
    return img[0, 0].numpy(), lab[0, 0].numpy().astype(np.int32)


def deformed_crop(sample: Sample, size: int, rng: np.random.Generator, spec: Deformation,
                  target: Target) -> tuple[np.ndarray, ...]:
    """A deformed size x size crop (as ``random_crop``): a larger crop is warped, its targets made from the warped
    labels, and the margin dropped."""
    m = spec.margin
    img, _, _, labels = random_crop(sample, size + 2 * m, rng)
    warped = make_sample(sample.name, *deform(img, labels, rng, spec), target)
    return tuple(a[m:m + size, m:m + size] for a in (warped.image, warped.classes, warped.small, warped.labels))


@dataclass
class Batch:
    """One training batch: images B x 1 x H x W float32, class targets B x H x W int64, the small objects' interior
    B x H x W bool, the instance labels B x H x W int32 (numpy, for targets computed per crop such as HoVer's), and
    per crop whether its annotations (``annotated``) and the teacher's soft targets (``distilled``) are learnt."""

    image: torch.Tensor
    classes: torch.Tensor
    small: torch.Tensor
    labels: np.ndarray
    annotated: torch.Tensor
    distilled: torch.Tensor


@dataclass
class Source:
    """Samples drawn with a relative ``weight``; ``labels``: their annotations are learnt, ``distill``: the teacher's
    soft targets are (``DataSource``'s flags)."""

    samples: list[Sample]
    weight: float = 1.0
    labels: bool = True
    distill: bool = True


class CropStream:
    """An endless, seeded stream of training batches mixing real crops and simulated frames (whose annotations, the
    simulator's, are learnt, and the teacher's targets too)."""

    def __init__(self, sources: list[Source], crop: int, batch: int, sim_fraction: float,
                 norm: Normalization, seed: int = 0, target: Target = Target(),
                 deformation: Deformation = Deformation()):
        self.sources = [s for s in sources if s.samples]
        weights = np.array([s.weight for s in self.sources], float)
        self.weights = weights / weights.sum() if weights.size else weights
        self.crop, self.batch, self.sim_fraction, self.norm = crop, batch, sim_fraction, norm
        self.target, self.deformation = target, deformation
        self.rng = np.random.default_rng(seed)

    def next(self) -> Batch:
        """The next batch; annotated crops are deformed with probability ``deformation.p``; simulated frames are
        drawn at the crop size."""
        xs, ys, ss, ls, flags = [], [], [], [], []
        for _ in range(self.batch):
            if not self.sources or self.rng.random() < self.sim_fraction:
                crop = random_crop(simulated_sample(self.rng, self.crop, self.norm, self.target), self.crop, self.rng)
                flags.append((True, True))
            else:
                source = self.sources[int(self.rng.choice(len(self.sources), p=self.weights))]
                flags.append((source.labels, source.distill))
                sample = source.samples[int(self.rng.integers(len(source.samples)))]
                if self.deformation.p and self.rng.random() < self.deformation.p:
                    crop = deformed_crop(sample, self.crop, self.rng, self.deformation, self.target)
                else:
                    crop = random_crop(sample, self.crop, self.rng)
            img, cls, small, labels = augment(*crop, rng=self.rng)
            xs.append(img)
            ys.append(cls)
            ss.append(small)
            ls.append(labels)
        annotated, distilled = torch.tensor(flags, dtype=torch.bool).T
        return Batch(torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64)),
                     torch.from_numpy(np.stack(ss)), np.stack(ls), annotated, distilled)


def dsb_held_out(stem: str) -> bool:
    """Whether a DSB 2018 image (its id, a hex digest) is in the fixed held-out split: ids starting with 0-3, 117 of the
    451 fluorescence images (26 %). Never trained on nor selected on; the generalization figures are measured on it."""
    return stem[:1] in "0123"
