"""``nucleiscreen evaluate``: compare two folders of label images with the metrics of ``trainer/metrics.py``.

Truth ``<stem>.tif`` (also ``.tiff``/``.png``) pairs with the prediction ``<stem>_labels.tif`` written by
``nucleiscreen predict``. Counts are pooled over all pairs (micro average) and also reported per image.
"""

from __future__ import annotations

from pathlib import Path

from nucleiscreen.engine.readers import IMAGE_SUFFIXES, FrameReadError, read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.trainer.metrics import SIZE_BINS, THRESHOLDS, Counts, match

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def _index(folder: Path, strip: str = "") -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in LABEL_SUFFIXES and p.stem.endswith(strip):
            out[p.stem[: len(p.stem) - len(strip)] if strip else p.stem] = p
    return out


def evaluate_folders(pred: str | Path, truth: str | Path) -> dict:
    """Pair and compare label images; returns ``{"summary": ..., "images": {stem: summary}, "unpaired": [...]}``."""
    preds = _index(Path(pred), "_labels")
    truths = _index(Path(truth))
    stems = sorted(set(preds) & set(truths))
    if not stems:
        raise UserError(f"no pairs: expected <stem>.tif in {truth} and <stem>_labels.tif in {pred}")
    return _pool(stems, lambda stem: (read_frame(truths[stem]), read_frame(preds[stem])),
                 sorted(set(preds) ^ set(truths)))


def _pool(stems: list[str], load, unpaired: list[str]) -> dict:
    """Match every stem's (truth, prediction), pooled and per image; ``load(stem)`` reads the pair."""
    total = Counts()
    images = {}
    for stem in stems:
        try:
            t, p = load(stem)
        except FrameReadError as exc:
            raise UserError(str(exc)) from None
        if t.shape != p.shape:
            raise UserError(f"{stem}: truth {t.shape} and prediction {p.shape} differ in size")
        c = match(t, p)
        images[stem] = c.summary()
        total.add(c)
    return {"summary": total.summary(), "images": images, "pairs": len(stems), "unpaired": unpaired}


def evaluate_baseline(images: str | Path, truth: str | Path) -> dict:
    """The classic baseline (trainer/baseline.py) run on ``images/<stem>.*`` and scored against ``truth/<stem>.tif``,
    in the report format of ``evaluate_folders``."""
    from nucleiscreen.trainer.baseline import segment_classic

    if not Path(images).is_dir():
        raise UserError(f"folder not found: {images}")
    raws = {p.stem: p for p in sorted(Path(images).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    truths = _index(Path(truth))
    stems = sorted(set(raws) & set(truths))
    if not stems:
        raise UserError(f"no pairs: expected images <stem>.png/.tif in {images} for the <stem>.tif of {truth}")
    return _pool(stems, lambda stem: (read_frame(truths[stem]), segment_classic(read_frame(raws[stem]))),
                 sorted(set(raws) ^ set(truths)))


def format_report(report: dict) -> str:
    s = report["summary"]
    lines = [f"{report['pairs']} image pair(s); {s['objects_true']} true and {s['objects_pred']} predicted objects"]
    lines.append("IoU  " + " ".join(f"{t:5.2f}" for t in THRESHOLDS))
    lines.append("F1   " + " ".join(f"{s['f1'][f'{t:.2f}']:5.3f}" for t in THRESHOLDS))
    lines.append(f"F1 mean {s['f1_mean']:.3f} | precision@0.5 {s['precision_0.5']:.3f} | recall@0.5 "
                 f"{s['recall_0.5']:.3f} | mean matched IoU {s['mean_matched_iou']:.3f}")
    lines.append(f"Jaccard (lab: mean best IoU per prediction) {s['jaccard_lab']:.3f} | pixel Jaccard "
                 f"{s['pixel_jaccard']:.3f} | splits {s['splits']} | merges {s['merges']}")
    by = s["by_size"]
    lines.append("area px      " + " ".join(f"{b:>8}" for b in SIZE_BINS))
    for key, n in (("recall_0.5", "true"), ("precision_0.5", "pred")):
        cells = (f"{by[b][key]:.2f}/{by[b][n]}" if by[b][n] else "-" for b in SIZE_BINS)
        lines.append(f"{key.split('_')[0]:<12} " + " ".join(f"{c:>8}" for c in cells))
    if report["unpaired"]:
        lines.append(f"unpaired (ignored): {', '.join(report['unpaired'][:10])}"
                     + (" ..." if len(report["unpaired"]) > 10 else ""))
    return "\n".join(lines)
