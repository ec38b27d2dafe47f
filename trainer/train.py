"""The training loop: plain PyTorch; the configuration is ``trainer/config.py``, the starting weights
``trainer/checkpoint.py``, the post-processing's calibration ``trainer/calibrate.py``.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from nucleiscreen.engine.model import load_model_info
from nucleiscreen.errors import UserError
from nucleiscreen.network import UNet, UNetConfig
from nucleiscreen.trainer.calibrate import CALIBRATION_IMAGES, calibrate_postprocessing, predict_logits, to_instances
from nucleiscreen.trainer.checkpoint import Logits, initial_weights
from nucleiscreen.trainer.config import TrainConfig, with_postprocessing
from nucleiscreen.trainer.data import Batch, CropStream, Sample, Source, load_folder
from nucleiscreen.trainer.distill import Teacher, distill_loss
from nucleiscreen.trainer.hover import HoVerNet, hover_loss, hv_maps
from nucleiscreen.trainer.metrics import Counts, match


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


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.onnx_init:
        return Logits(load_model_info(cfg.onnx_init).path)
    return HoVerNet(cfg.model) if cfg.arch == "hover" else UNet(cfg.model)


def model_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the architecture and normalization of the model file it trains (``init`` naming one), which a
    config cannot change."""
    if not cfg.onnx_init:
        return cfg
    info = load_model_info(cfg.onnx_init)
    if info.is_checkpoint or info.input_dtype != "float32":
        raise UserError(f"init {cfg.onnx_init}: an FP32 ONNX model file is trained (not {info.input_dtype})")
    return replace(cfg, model=UNetConfig(**info.card["model"]), norm=info.normalization)


def nucleus_area(cfg: TrainConfig) -> float:
    """The typical nucleus area (px) that ``rescale``d sources are resized to: the card's ``nucleus_area_px`` of the
    model file trained or of the teacher, else of the shipped default (the lab's CX7 frames)."""
    return float(load_model_info(cfg.onnx_init or cfg.teacher).card["nucleus_area_px"])


def batch_loss(out: torch.Tensor, cls: torch.Tensor, small: torch.Tensor, labels: np.ndarray,
               weights: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.arch == "hover":
        hv = torch.from_numpy(np.stack([hv_maps(lab) for lab in labels])).to(out.device)
        return hover_loss(out, cls > 0, hv)
    return loss_fn(out, cls, weights, cfg.dice, small, cfg.small_weight)


def step_loss(net: torch.nn.Module, batch: Batch, teacher: Teacher | None, weights: torch.Tensor, cfg: TrainConfig,
              device: torch.device, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """The loss of one batch: the annotated loss over its annotated crops plus ``distill`` x the teacher's over its
    distilled crops (``Batch``'s flags; a source can give either or both)."""
    x = batch.image.to(device, non_blocking=True).to(memory_format=torch.channels_last)
    ann = batch.annotated.to(device)
    dis = batch.distilled.to(device) if teacher is not None else torch.zeros_like(ann)
    soft = teacher(x[dis]).to(device) if bool(dis.any()) else None
    y = batch.classes.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = net(x)
        loss = logits.new_zeros(())
        if bool(ann.any()):
            loss = loss + batch_loss(logits[ann], y[ann], batch.small.to(device)[ann], batch.labels[ann.cpu().numpy()],
                                     weights, cfg)
        if soft is not None:
            loss = loss + cfg.distill * distill_loss(logits[dis], soft, weights[y[dis]])
    return loss


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
        counts.add(match(s.labels, to_instances(out, cfg.arch, s.image, cfg.post, cfg.boundary_bias)))
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
    cfg = model_config(cfg)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    area = nucleus_area(cfg) if any(s.rescale for s in (*cfg.train, *cfg.val)) else None
    sources = [Source(load_folder(s.path, cfg.norm, area if s.rescale else None, cfg.target, s.limit, s.match),
                      s.weight, s.labels, s.distill) for s in cfg.train]
    vals = [load_folder(v.path, cfg.norm, area if v.rescale else None, cfg.target, v.limit, v.match)
            for v in cfg.val]
    val = vals[0] if vals else []
    stream = CropStream(sources, cfg.crop, cfg.batch, cfg.sim_fraction, cfg.norm, cfg.seed, cfg.target,
                        cfg.deformation)

    teacher = Teacher(cfg.teacher, cfg.norm, cfg.threads) if cfg.teacher else None
    net = build_model(cfg)
    resumed = resume and (out / "last.pt").exists()  # a resumed run has its own weights
    if cfg.init and not cfg.onnx_init and not resumed:
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
        more = [f"val{i}_{k}" for i in range(1, len(vals)) for k in ("f1_0.5", "f1_mean")]
        writer.writerow(["step", "train_loss", "val_loss", "val_f1_0.5", "val_f1_mean", "val_jaccard_lab", *more,
                         "lr", "seconds"])
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="train", disable=not progress)
    t0 = time.time() - earlier
    running = []
    if cfg.steps == 0 and not (out / "best.pt").exists():  # nothing to train: the start (an average) is the model
        torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "step": 0,
                    "val": validate(net, val, device, cfg) if val else {}}, out / "best.pt")
    net.train()
    while step < cfg.steps:
        loss = step_loss(net, stream.next(), teacher, weights, cfg, device, amp_dtype)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        running.append(loss.item())
        bar.update()
        if progress:
            bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}", best=f"{max(best, 0):.3f}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            nan = float("nan")
            every = [validate(net, v, device, cfg) for v in vals] or [
                {"loss": nan, "f1": {"0.50": nan}, "f1_mean": nan, "jaccard_lab": nan}]
            metrics = every[0]
            f1 = metrics["f1"]["0.50"]
            score = float(np.mean([m["f1_mean"] if cfg.select_by == "f1_mean" else m["f1"]["0.50"] for m in every]))
            more = [x for m in every[1:] for x in (m["f1"]["0.50"], m["f1_mean"])]
            writer.writerow([step, f"{np.mean(running):.4f}", f"{metrics['loss']:.4f}", f1, metrics["f1_mean"],
                             metrics["jaccard_lab"], *more, f"{sched.get_last_lr()[0]:.2e}",
                             f"{time.time() - t0:.0f}"])
            log.flush()
            running = []
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "best": best, "config": cfg.to_dict()}
            snapshot = {"model": net.state_dict(), "config": cfg.to_dict(), "step": step, "val": metrics,
                        "val_more": every[1:]}
            if not val or score > best:
                best = score if val else best
                state["best"] = best
                torch.save(snapshot, out / "best.pt")
            if cfg.keep_checkpoints:
                torch.save(snapshot, out / f"step{step}.pt")
            torch.save(state, out / "last.tmp")
            (out / "last.tmp").replace(last)
            if progress:
                bar.write(f"step {step}: val F1@0.5 {f1:.3f}, F1 mean {metrics['f1_mean']:.3f}, "
                          f"Jaccard {metrics['jaccard_lab']:.3f}, val loss {metrics['loss']:.3f}")
    bar.close()
    log.close()
    best_path = out / "best.pt"
    if cfg.arch == "unet" and sources and sources[0].labels and best_path.exists():
        ck = torch.load(best_path, map_location=device, weights_only=False)
        # Calibrated once, on the first (the screen's own) training source; again when re-running a finished run
        # whose checkpoint predates the calibration of the growth of small objects.
        if "grow_area" not in ck.get("postprocessing", {}):
            net.load_state_dict(ck["model"])
            ck["postprocessing"] = calibrate_postprocessing(net, sources[0].samples[:CALIBRATION_IMAGES], device,
                                                            cfg.model.multiple)
            if val:  # the card's validation figures are those of the post-processing the engine will apply
                post = ck["postprocessing"]
                ck["val"] = validate(net, val, device, with_postprocessing(cfg, post))
            torch.save(ck, best_path)
            if progress:
                print(f"post-processing calibrated on training images: {ck['postprocessing']}")
    return out
