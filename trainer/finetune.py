"""Fine-tuning a shipped model on a user's own annotated frames: ``nucleiscreen train --finetune DIR``.

The ONNX model file is the starting point (no PyTorch checkpoint needed): its graph runs as a torch module
(``engine/backends/onnx_torch.OnnxModule``, cut at the network's logits) whose weights are trained; the batch-norm
layers were folded into the convolutions at export, so fine-tuning keeps their statistics fixed, as fine-tuning on a
handful of frames should. The frames are normalized as the card says and resized so that their nuclei have the model's
size (the card's ``nucleus_area_px``), a seeded fifth of them (at least one) is held out, the rest trains with the
trainer's loss, crops and augmentation, the post-processing is calibrated again on the training frames, and the
weights and the new boundary bias are written into a copy of the ONNX graph with an updated card. F1 on the held-out
frames is measured for the starting model and for the fine-tuned one, each with its own post-processing.

Annotation folders as napari, Fiji, QuPath or Cellpose write them: ``images/`` with ``masks/`` (or ``labels/``)
beside it, or one folder of images and their masks; a mask has its image's name, or that name with ``_masks``,
``_mask``, ``_labels``, ``_label`` or ``_cp_masks`` appended (TIFF or PNG, one integer id per nucleus, 0 background).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nucleiscreen.engine.model import CARD_KEY, load_model_info
from nucleiscreen.engine.readers import IMAGE_SUFFIXES, FrameReadError, read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.measure import typical_area
from nucleiscreen.kernels.normalize import normalize
from nucleiscreen.kernels.postprocess import PostProcessing
from nucleiscreen.network import UNetConfig
from nucleiscreen.trainer import FINETUNE_STEPS
from nucleiscreen.trainer.calibrate import calibrate_postprocessing
from nucleiscreen.trainer.checkpoint import Logits
from nucleiscreen.trainer.config import TrainConfig, with_postprocessing
from nucleiscreen.trainer.data import CropStream, Deformation, Sample, Source, Target, _rescale, make_sample
from nucleiscreen.trainer.train import loss_fn, pick_device, validate

MASK_SUFFIXES = ("_cp_masks", "_masks", "_mask", "_labels", "_label")
MASK_FOLDERS = ("masks", "labels")


@dataclass
class FinetuneResult:
    model: Path
    train: list[str]
    held_out: list[str]
    before: dict  # validate()'s figures on the held-out frames: the starting model
    after: dict  # ... the fine-tuned one
    seconds: float
    scale: float  # the factor the frames were resized by to the model's nucleus size


def find_annotations(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of an annotation folder (module docstring); one clear line for a folder that is not one."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"annotation folder not found: {root}")
    mask_dir = next((root / d for d in MASK_FOLDERS if (root / d).is_dir()), None)
    if (root / "images").is_dir() and mask_dir is not None:
        images, masks = _files(root / "images"), _files(mask_dir)
    else:
        files = _files(root)
        masks = [p for p in files if p.stem.lower().endswith(MASK_SUFFIXES)]
        images = [p for p in files if p not in masks]
    by_stem = {p.stem: p for p in masks}
    pairs, missing = [], []
    for image in images:
        mask = next((by_stem[s] for s in (image.stem, *(image.stem + x for x in MASK_SUFFIXES)) if s in by_stem),
                    None)
        (pairs.append((image, mask)) if mask is not None else missing.append(image.name))
    if missing:
        raise UserError(f"{root}: {len(missing)} image(s) without a mask, e.g. {missing[0]} (a mask has the image's "
                        f"name, or it with {' / '.join(MASK_SUFFIXES[1:])}, in masks/ or beside the image)")
    if len(pairs) < 2:
        raise UserError(f"{root}: {len(pairs)} annotated image(s); fine-tuning needs at least 2 (one is held out)")
    return pairs


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_annotations(pairs: list[tuple[Path, Path]], info, target: Target,
                     per_image: bool = False) -> tuple[list[Sample], float]:
    """Normalized samples at the model's nucleus size, and the factor they were resized by (one for the folder, as
    one microscope took it; ``per_image``: each image's own, for collections such as DSB 2018, reported as 1.0)."""
    raws, labels = [], []
    for image, mask in pairs:
        try:
            raw, lab = read_frame(image), read_frame(mask)
        except FrameReadError as exc:
            raise UserError(str(exc)) from None
        if raw.shape != lab.shape:
            raise UserError(f"{image.name} is {raw.shape[1]}x{raw.shape[0]} but its mask {mask.name} is "
                            f"{lab.shape[1]}x{lab.shape[0]}")
        if lab.dtype.kind == "f" or lab.max() == 0:
            raise UserError(f"{mask}: {'an empty mask (no nucleus)' if lab.dtype.kind != 'f' else 'float pixels'}; "
                            "a mask is an integer label image, one id per nucleus")
        raws.append(raw)
        labels.append(lab.astype(np.int32))
    folder = _factor(labels, info)
    samples = []
    for (image, _), raw, lab in zip(pairs, raws, labels):
        x = normalize(raw, info.normalization)
        factor = _factor([lab], info) if per_image else folder
        if factor != 1.0:
            x, lab = _rescale(x, lab, factor)
        samples.append(make_sample(image.stem, x, lab, target))
    return samples, 1.0 if per_image else folder


def _factor(labels: list[np.ndarray], info) -> float:
    """The factor that gives these labels' nuclei the model's typical area (1.0 within 5 %, or when unknown)."""
    area, _ = typical_area(labels)
    model_area = info.card.get("nucleus_area_px")
    factor = float(np.clip(np.sqrt(model_area / area), 0.25, 4.0)) if model_area and area else 1.0
    return 1.0 if abs(factor - 1) <= 0.05 else factor


def model_target(info) -> Target:
    """The training targets of the model's card (its boundary band and solid small objects)."""
    post = info.postprocessing
    return Target(width=int(post.get("boundary_width", 2)), solid_area=int(post.get("solid_area", 0)))


def finetune(folder: str | Path, out: str | Path, model: str | Path | None = None, steps: int = FINETUNE_STEPS,
             batch: int = 4, crop: int = 256, lr: float = 3e-4, seed: int = 0, threads: int | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune ``model`` (default: the shipped one) on the annotated frames of ``folder`` and write the new ONNX
    model to ``out`` (module docstring)."""
    t0 = time.time()
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    info = load_model_info(model)
    if info.is_checkpoint:
        raise UserError("--finetune starts from an ONNX model file; for a .pt checkpoint use a config with init")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out must name the .onnx file to write, not {out}")
    pairs = find_annotations(folder)
    samples, factor = load_annotations(pairs, info, model_target(info))
    order = np.random.default_rng(seed).permutation(len(samples))
    n_held = max(1, round(0.2 * len(samples)))
    held, train = [samples[i] for i in sorted(order[:n_held])], [samples[i] for i in sorted(order[n_held:])]
    net, before, after, post = train_onnx(info, [Source(train)], held, train, steps, batch, crop, lr, seed, threads,
                                          progress)
    write_model(info, net, post, out, {
        "finetuned_from": {"path": str(info.path), "sha256": info.sha256},
        "frames": [p[0].name for p in pairs], "held_out": [s.name for s in held], "steps": steps, "batch": batch,
        "crop": crop, "lr": lr, "seed": seed, "resized_by": round(factor, 4)}, after)
    return FinetuneResult(out, [s.name for s in train], [s.name for s in held], before, after, time.time() - t0,
                          factor)


def train_onnx(info, sources: list[Source], held: list[Sample], calibration: list[Sample],
               steps: int, batch: int = 4, crop: int = 256, lr: float = 3e-4, seed: int = 0,
               threads: int | None = None, progress: bool = True,
               sim_fraction: float = 0.0) -> tuple[Logits, dict, dict, dict]:
    """Train the model file's weights on crops of ``sources`` and ``sim_fraction`` simulated
    frames; the post-processing is calibrated again on ``calibration``. Returns the network, ``validate``'s figures
    on ``held`` before and after, and the new post-processing."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = pick_device("auto")
    net = Logits(info.path).to(device)
    cfg = TrainConfig(crop=crop, batch=batch, model=UNetConfig(**info.card.get("model", {})))
    if cfg.model.multiple != info.multiple:
        raise UserError(f"{info.path}: its card's model does not match its spatial_multiple; re-export it")
    post = info.postprocessing
    before = validate(net, held, device, with_postprocessing(cfg, post))
    crop = min(crop, *(min(s.image.shape) for src in sources for s in src.samples)) // info.multiple * info.multiple
    if crop < info.multiple:
        raise UserError(f"the training frames are smaller than {info.multiple} px at the model's scale")
    stream = CropStream(sources, crop, batch, sim_fraction, info.normalization, seed, model_target(info), Deformation())
    weights = torch.tensor(cfg.class_weights, device=device)
    opt = torch.optim.AdamW([p for p in net.parameters()], lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + np.cos(np.pi * min(k, steps) / steps)))
    net.train()
    for _ in tqdm(range(steps), desc="fine-tune", unit="step", disable=not progress):
        b = stream.next()
        loss = loss_fn(net(b.image.to(device)), b.classes.to(device), weights, cfg.dice, b.small.to(device),
                       cfg.small_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    new_post = calibrate_postprocessing(net, calibration, device, info.multiple)
    after = validate(net, held, device, with_postprocessing(cfg, new_post))
    return net, before, after, new_post


def write_model(info, net: Logits, post: dict, out: Path, training: dict, metrics: dict) -> None:
    """A copy of ``info``'s ONNX graph with ``net``'s weights, ``post``'s boundary bias and an updated card."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(info.path))
    for init in model.graph.initializer:
        if init.name in net.weights:
            value = net.params[net.weights[init.name]].detach().cpu().numpy()
            init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name))
    _set_boundary_bias(model, net.output, float(post["boundary_bias"]))
    card = json.loads(next(p.value for p in model.metadata_props if p.key == CARD_KEY))
    old = card.get("postprocessing", {})
    card["postprocessing"] = {**old, **PostProcessing.from_card({**old, **post}).to_card(),
                              "boundary_bias": post["boundary_bias"]}
    card["nucleus_area_px"] = post.get("nucleus_area_px") or card.get("nucleus_area_px")
    card["training_data"] = training
    card["validation_metrics"] = {k: v for k, v in metrics.items() if k != "by_size"}
    for p in model.metadata_props:
        if p.key == CARD_KEY:
            p.value = json.dumps(card)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def _set_boundary_bias(model, logits: str, bias: float) -> None:
    """Set the scalar the export head adds to the boundary logit (the constant of the one Add after the logits)."""
    from onnx import numpy_helper

    produced = {o: n for n in model.graph.node for o in n.output}
    sliced = {n.output[0] for n in model.graph.node if n.op_type == "Slice" and n.input[0] == logits}
    adds = [n for n in model.graph.node if n.op_type == "Add" and n.input[0] in sliced]
    if len(adds) != 1 or adds[0].input[1] not in produced or produced[adds[0].input[1]].op_type != "Constant":
        raise UserError(f"{model.graph.name or 'the model'}: no boundary-bias head after the logits; export the model "
                        "with `nucleiscreen export` to fine-tune it")
    const = produced[adds[0].input[1]]
    old = numpy_helper.to_array(const.attribute[0].t)
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full_like(old, bias), const.attribute[0].t.name))
