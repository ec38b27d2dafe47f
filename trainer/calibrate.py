"""The U-Net's post-processing as the trainer runs it (the engine's, from the network's logits), and its calibration on
training frames: the boundary bias, seed growth, faint-object filter, area and edge limits and the growth of small
objects that the model card carries."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from nucleiscreen.kernels.measure import typical_area
from nucleiscreen.kernels.postprocess import PostProcessing, postprocess
from nucleiscreen.network import class_argmax
from nucleiscreen.trainer.data import Sample
from nucleiscreen.trainer.hover import hover_instances
from nucleiscreen.trainer.metrics import Counts, match

CALIBRATION_IMAGES = 50  # post-processing is calibrated on (up to) this many frames of the first training source


@torch.no_grad()
def predict_logits(net: torch.nn.Module, image: np.ndarray, device: torch.device, multiple: int) -> torch.Tensor:
    """Logits (1 x C x H x W) of one normalized image, reflect-padded to the network's multiple and cropped back."""
    h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    x = torch.from_numpy(np.pad(image, ((0, ph), (0, pw)), mode="reflect"))[None, None].to(device)
    return net(x)[:, :, :h, :w]


def class_map(out: torch.Tensor, boundary_bias: float = 0.0) -> np.ndarray:
    """The uint8 class map of one image's logits (1 x 3 x H x W), as the exported graph computes it."""
    return class_argmax(out, boundary_bias)[0].cpu().numpy()


def to_instances(out: torch.Tensor, arch: str, image: np.ndarray, post: PostProcessing,
                 boundary_bias: float = 0.0) -> np.ndarray:
    """Instances of one image from the network's output (1 x C x H x W), by the architecture's post-processing: for
    the U-Net the engine's own (``kernels/postprocess.py``) on the class map with ``boundary_bias``; ``image`` is the
    normalized input."""
    if arch == "hover":
        return hover_instances(out[0].cpu().numpy())
    return postprocess(class_map(out, boundary_bias), image, post)


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

    def score(threshold: float | None, bias: float, post: PostProcessing) -> float:
        """F1 at ``threshold`` (None: the mean over thresholds) of ``samples`` with this post-processing."""
        counts = Counts()
        for s, out in zip(samples, logits):
            counts.add(match(s.labels, postprocess(class_map(out, bias), s.image, post)))
        return round(counts.f1(threshold) if threshold is not None else counts.f1_mean(), 4)

    def best(scores: dict):  # ties go to the values nearest zero (the least change)
        return max(scores, key=lambda k: (scores[k], *(-abs(v) for v in np.atleast_1d(k))))

    base = PostProcessing()
    grid = {(b, g): score(None, b, replace(base, max_grow=g)) for b in BIAS_CHOICES for g in GROW_CHOICES}
    by_bias = {b: max(grid[b, g] for g in GROW_CHOICES) for b in BIAS_CHOICES}
    b = best(by_bias)
    grow = {g: grid[b, g] for g in GROW_CHOICES}
    post = replace(base, max_grow=best(grow))
    detection = {(c, a): score(0.5, b, replace(post, min_contrast=c, min_area=a)) for c in CONTRAST_CHOICES
                 for a in AREA_CHOICES}
    c, a = best(detection)
    post = replace(post, min_contrast=c, min_area=a)
    edge = {e: score(0.5, b, replace(post, min_edge_area=e)) for e in EDGE_CHOICES}
    post = replace(post, min_edge_area=best(edge))
    growth = {(0, 0.5): score(None, b, post)}
    growth.update({(ga, gl): score(None, b, replace(post, grow_area=ga, grow_level=gl))
                   for ga in GROW_AREA_CHOICES[1:] for gl in GROW_LEVEL_CHOICES})
    ga, gl = max(growth, key=lambda k: (growth[k], -k[0], k[1]))  # ties: the least growth
    post = replace(post, grow_area=ga, grow_level=gl)
    return {"boundary_bias": b, "f1_mean_by_boundary_bias": by_bias, "max_grow": post.max_grow,
            "f1_mean_by_max_grow": grow, "min_contrast": c, "min_area": a,
            "f1_0.50_by_min_contrast_and_area": {ci: {ai: detection[ci, ai] for ai in AREA_CHOICES}
                                                 for ci in CONTRAST_CHOICES},
            "min_edge_area": post.min_edge_area, "f1_0.50_by_min_edge_area": edge,
            "grow_area": ga, "grow_level": gl,
            "f1_mean_without_growth": growth[0, 0.5],
            "f1_mean_by_grow_area_and_level": {ai: {li: growth[ai, li] for li in GROW_LEVEL_CHOICES}
                                               for ai in GROW_AREA_CHOICES[1:]},
            "images": len(samples),
            # the typical nucleus area of the calibrated output: the model card's nucleus_area_px (--pixel-size auto)
            "nucleus_area_px": typical_area([postprocess(class_map(out, b), s.image, post)
                                             for s, out in zip(samples, logits)])[0]}
