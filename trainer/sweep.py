"""Model selection, the paper's Fig. 3: train several configurations, score each on validation, pick the winner.

``nucleiscreen train --sweep FILE`` reads a JSON file::

    {
      "out": "runs/sweep",
      "base": {...training options shared by all runs (trainer/train.py TrainConfig)...},
      "runs": {"unet-d3-b16": {"model": {"depth": 3, "base": 16}}, "hover-d3-b16": {"arch": "hover"}, ...},
      "compare": {"unet-small (long)": "runs/unet-ft/best.pt"},
      "select_by": "f1_mean"
    }

Each run trains into ``out/<name>/`` (and resumes there, so re-running the command after an interruption, or once all
runs are done, only re-evaluates). ``compare`` adds checkpoints trained elsewhere (e.g. the winner trained longer) to
the table without training them. Every model, and the classic CellProfiler-style baseline (trainer/baseline.py), is
scored on the validation folder of ``base`` with whole images; the table (``sweep.md``, ``sweep.csv``, ``sweep.json``)
lists F1 at IoU 0.5-0.9, the mean F1 over 0.5-0.95, the lab's Jaccard, pixel Jaccard, training steps and time. The
winner (highest ``select_by`` among the trained runs and ``compare`` entries) is copied to ``out/winner.pt``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import polars as pl
import torch

from nucleiscreen.errors import UserError
from nucleiscreen.trainer.config import TrainConfig, read_json, with_postprocessing
from nucleiscreen.trainer.data import load_folder
from nucleiscreen.trainer.evaluate import evaluate_baseline
from nucleiscreen.trainer.metrics import THRESHOLDS
from nucleiscreen.trainer.train import build_model, train, validate

SELECT_BY = ("f1_mean", "f1_0.50", "jaccard_lab", "pixel_jaccard")
SHOWN = ("0.50", "0.60", "0.70", "0.80", "0.90")


def load_sweep(path: str | Path) -> dict:
    spec = read_json(path, "sweep file")
    unknown = sorted(set(spec) - {"out", "base", "runs", "compare", "select_by"})
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {', '.join(unknown)}; "
                        "known: out, base, runs, compare, select_by")
    runs = spec.get("runs")
    if not isinstance(runs, dict) or not runs or not all(isinstance(v, dict) for v in runs.values()):
        raise UserError(f"{path}: 'runs' must map run names to option overrides, e.g. {{\"unet-d3\": {{}}}}")
    if not isinstance(spec.get("base", {}), dict) or not isinstance(spec.get("compare", {}), dict):
        raise UserError(f"{path}: 'base' must be an object of training options, 'compare' an object name -> path")
    if not spec.get("base", {}).get("val"):
        raise UserError(f"{path}: 'base' must name the validation folder ('val') every model is scored on")
    if spec.get("select_by", "f1_mean") not in SELECT_BY:
        raise UserError(f"{path}: select_by must be one of {', '.join(SELECT_BY)}")
    return spec


def run_config(spec: dict, name: str) -> TrainConfig:
    raw = {**spec.get("base", {}), **spec["runs"][name], "out": str(Path(spec.get("out", "runs/sweep")) / name)}
    if "model" in spec.get("base", {}) and "model" in spec["runs"][name]:
        raw["model"] = {**spec["base"]["model"], **spec["runs"][name]["model"]}
    return TrainConfig.from_dict(raw)


@torch.no_grad()
def score_checkpoint(path: str | Path, val: str) -> dict:
    """Metrics of a checkpoint on a folder of annotated images, with its own normalization and post-processing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = TrainConfig.from_dict(ck["config"])
    net = build_model(cfg)
    net.load_state_dict(ck["model"])
    cfg = with_postprocessing(cfg, ck.get("postprocessing", {}))
    samples = load_folder(val, cfg.norm, None, cfg.target)
    summary = validate(net, samples, torch.device("cpu"), cfg)
    summary.update(arch=cfg.arch, max_grow=cfg.post.max_grow if cfg.arch == "unet" else None, depth=cfg.model.depth,
                   base=cfg.model.base, step=ck.get("step"),
                   params_m=round(sum(p.numel() for p in net.parameters()) / 1e6, 2))
    return summary


def score_baseline(val: str) -> dict:
    summary = evaluate_baseline(Path(val) / "images", Path(val) / "masks")["summary"]
    summary.update(arch="classic (Otsu + watershed)")
    return summary


def _train_minutes(folder: Path) -> float | None:
    log = folder / "log.csv"
    if not log.is_file():
        return None
    seconds = pl.read_csv(log)["seconds"]
    return round(float(seconds[-1]) / 60, 1) if len(seconds) else None


def sweep_table(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{
        "model": r["name"],
        "arch": r["arch"],
        "depth": r.get("depth"),
        "base": r.get("base"),
        "params_M": r.get("params_m"),
        "steps": r.get("step"),
        "train_min": r.get("train_min"),
        **{f"f1_{t}": r["f1"][t] for t in SHOWN},
        "f1_mean": r["f1_mean"],
        "jaccard_lab": r["jaccard_lab"],
        "pixel_jaccard": r["pixel_jaccard"],
        "precision_0.5": r["precision_0.5"],
        "recall_0.5": r["recall_0.5"],
        "winner": r.get("winner", False),
    } for r in rows], infer_schema_length=None)


def format_markdown(table: pl.DataFrame, val: str) -> str:
    cols = ["model", "arch", "params_M", "steps", "train_min", *[f"f1_{t}" for t in SHOWN], "f1_mean",
            "jaccard_lab", "pixel_jaccard"]
    head = ["model", "arch", "params (M)", "steps", "train (min)", *[f"F1@{t}" for t in SHOWN], "F1 mean 0.5-0.95",
            "Jaccard (lab)", "pixel Jaccard"]
    lines = [f"Scored on {val} (whole images; F1 mean over IoU {THRESHOLDS[0]:.2f}-{THRESHOLDS[-1]:.2f})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            cells.append("" if v is None else f"{v:.3f}" if isinstance(v, float) and c not in ("params_M", "train_min")
                         else str(v))
        if row["winner"]:
            cells[0] = f"**{cells[0]}** (winner)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_sweep(path: str | Path, progress: bool = True, train_runs: bool = True) -> Path:
    """Train (or resume) every run of the sweep file, score all on validation, write the table, copy the winner."""
    spec = load_sweep(path)
    out = Path(spec.get("out", "runs/sweep"))
    out.mkdir(parents=True, exist_ok=True)
    val = spec["base"]["val"]
    select_by = spec.get("select_by", "f1_mean")
    configs = {name: run_config(spec, name) for name in spec["runs"]}  # validate all before training any
    rows, checkpoints = [], {}
    for name, cfg in configs.items():
        if train_runs:
            t0 = time.time()
            train(cfg, resume=True, progress=progress)
            print(f"{name}: trained ({(time.time() - t0) / 60:.1f} min this session)")
        checkpoints[name] = Path(cfg.out) / "best.pt"
    for name, ckpt in spec.get("compare", {}).items():
        if Path(ckpt).is_file():
            checkpoints[name] = Path(ckpt)
        else:
            print(f"{name}: {ckpt} not found, left out of the table (train it first)")
    for name, ckpt in checkpoints.items():
        row = score_checkpoint(ckpt, val)
        row.update(name=name, checkpoint=str(ckpt), train_min=_train_minutes(ckpt.parent))
        rows.append(row)
        print(f"{name}: F1@0.5 {row['f1']['0.50']:.3f}, F1 mean {row['f1_mean']:.3f}")
    key = (lambda r: r["f1"]["0.50"]) if select_by == "f1_0.50" else (lambda r: r[select_by])
    winner = max(rows, key=key)
    winner["winner"] = True
    base = score_baseline(val)
    base.update(name="classic baseline")
    rows.append(base)
    table = sweep_table(rows)
    table.write_csv(out / "sweep.csv")
    (out / "sweep.md").write_text(format_markdown(table, val))
    (out / "sweep.json").write_text(json.dumps({"select_by": select_by, "winner": winner["name"], "rows": rows},
                                               indent=2, default=str))
    shutil.copyfile(winner["checkpoint"], out / "winner.pt")
    print(format_markdown(table, val))
    print(f"winner by {select_by}: {winner['name']} -> {out / 'winner.pt'}")
    return out
