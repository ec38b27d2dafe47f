"""Instance segmentation metrics, as the seed lab reported them (no torch needed).

Definitions, for a truth label image T (objects t) and a prediction P (objects p):

- IoU(t, p) = |t ∩ p| / |t ∪ p| over pixels.
- Matching at threshold τ >= 0.5: t and p match when IoU(t, p) > τ. For τ >= 0.5 an object can overlap at most one
  other object by more than half of their union, so matches are one-to-one without any assignment step.
  TP = matched pairs, FP = unmatched predictions, FN = unmatched truths;
  precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN) (1.0 when both are empty).
- Thresholds 0.50, 0.55, ..., 0.95 (the lab's F1 curve).
- mean matched IoU: the mean IoU of the pairs matched at 0.5.
- "Jaccard" (the lab's): the mean over predicted objects of their best IoU with any truth object.
- pixel Jaccard: |fg(T) ∩ fg(P)| / |fg(T) ∪ fg(P)| of the foreground masks.
- splits: truth objects overlapped by two or more predictions with IoU >= 0.1; merges: predictions overlapping two
  or more truth objects with IoU >= 0.1 (the lab's split/merge criterion).
- by size: recall at 0.5 per truth-object area bin and precision at 0.5 per predicted-object area bin (``SIZE_BINS``,
  pixels), so losses among micronuclei and fragments show apart from those among nuclei.
Metrics over a set of images pool TP, FP and FN over all images before computing F1 (micro average).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SIZE_EDGES = (25, 50, 100, 300, 1000)  # object area bins (pixels): <25, 25-50, ..., >=1000
SIZE_BINS = ("<25", "25-50", "50-100", "100-300", "300-1000", ">=1000")


def _by_size(areas: np.ndarray, matched: np.ndarray) -> list[list[int]]:
    """[objects, matched] per SIZE_BINS bin."""
    b = np.digitize(areas, SIZE_EDGES)
    return [[int((b == i).sum()), int(matched[b == i].sum())] for i in range(len(SIZE_BINS))]


@dataclass
class Counts:
    """Pooled counts over one or more images; the metrics derive from these."""

    n_true: int = 0
    n_pred: int = 0
    tp: dict[float, int] = field(default_factory=lambda: {t: 0 for t in THRESHOLDS})
    matched_iou_sum: float = 0.0
    best_iou_sum: float = 0.0
    fg_inter: int = 0
    fg_union: int = 0
    splits: int = 0
    merges: int = 0
    size_true: list = field(default_factory=lambda: [[0, 0] for _ in SIZE_BINS])  # [truths, matched@0.5] per bin
    size_pred: list = field(default_factory=lambda: [[0, 0] for _ in SIZE_BINS])  # [predictions, matched@0.5]

    def add(self, other: Counts) -> Counts:
        self.n_true += other.n_true
        self.n_pred += other.n_pred
        for t in THRESHOLDS:
            self.tp[t] += other.tp[t]
        self.matched_iou_sum += other.matched_iou_sum
        self.best_iou_sum += other.best_iou_sum
        self.fg_inter += other.fg_inter
        self.fg_union += other.fg_union
        self.splits += other.splits
        self.merges += other.merges
        for mine, theirs in ((self.size_true, other.size_true), (self.size_pred, other.size_pred)):
            for a, b in zip(mine, theirs):
                a[0] += b[0]
                a[1] += b[1]
        return self

    def f1(self, t: float = 0.5) -> float:
        tp = self.tp[t]
        denom = self.n_true + self.n_pred  # = 2TP + FP + FN
        return 1.0 if denom == 0 else 2.0 * tp / denom

    def f1_mean(self) -> float:
        """F1 averaged over ``THRESHOLDS`` (IoU 0.50-0.95)."""
        return float(np.mean([self.f1(t) for t in THRESHOLDS]))

    def summary(self) -> dict:
        tp = self.tp[0.5]
        return {
            "objects_true": self.n_true,
            "objects_pred": self.n_pred,
            "f1": {f"{t:.2f}": round(self.f1(t), 4) for t in THRESHOLDS},
            "f1_mean": round(self.f1_mean(), 4),
            "precision_0.5": round(tp / self.n_pred, 4) if self.n_pred else 1.0,
            "recall_0.5": round(tp / self.n_true, 4) if self.n_true else 1.0,
            "mean_matched_iou": round(self.matched_iou_sum / tp, 4) if tp else 0.0,
            "jaccard_lab": round(self.best_iou_sum / self.n_pred, 4) if self.n_pred else 1.0,
            "pixel_jaccard": round(self.fg_inter / self.fg_union, 4) if self.fg_union else 1.0,
            "splits": self.splits,
            "merges": self.merges,
            "by_size": {name: {"true": t[0], "recall_0.5": round(t[1] / t[0], 4) if t[0] else None,
                               "pred": p[0], "precision_0.5": round(p[1] / p[0], 4) if p[0] else None}
                        for name, t, p in zip(SIZE_BINS, self.size_true, self.size_pred)},
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tp"] = {str(k): v for k, v in self.tp.items()}
        return d


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], int(ids.size)


def match(truth: np.ndarray, pred: np.ndarray) -> Counts:
    """Compare one predicted label image with its truth; see the module docstring for the definitions."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t, nt = _compact(np.asarray(truth).astype(np.int64, copy=False))
    p, npd = _compact(np.asarray(pred).astype(np.int64, copy=False))
    c = Counts(n_true=nt, n_pred=npd)
    area_t = np.bincount(t.ravel(), minlength=nt + 1)
    area_p = np.bincount(p.ravel(), minlength=npd + 1)
    both = (t > 0) & (p > 0)
    c.fg_inter = int(both.sum())
    c.fg_union = int(((t > 0) | (p > 0)).sum())
    c.size_true = _by_size(area_t[1:], np.zeros(nt, bool))
    c.size_pred = _by_size(area_p[1:], np.zeros(npd, bool))
    if nt == 0 or npd == 0:
        return c
    pairs, inter = np.unique(t[both] * (npd + 1) + p[both], return_counts=True)
    ti, pj = pairs // (npd + 1), pairs % (npd + 1)
    iou = inter / (area_t[ti] + area_p[pj] - inter)
    for thr in THRESHOLDS:
        c.tp[thr] = int((iou > thr).sum())
    c.matched_iou_sum = float(iou[iou > 0.5].sum())
    hit_t, hit_p = np.zeros(nt + 1, bool), np.zeros(npd + 1, bool)
    hit_t[ti[iou > 0.5]] = True
    hit_p[pj[iou > 0.5]] = True
    c.size_true = _by_size(area_t[1:], hit_t[1:])
    c.size_pred = _by_size(area_p[1:], hit_p[1:])
    best = np.zeros(npd + 1)
    np.maximum.at(best, pj, iou)
    c.best_iou_sum = float(best[1:].sum())
    strong = iou >= 0.1
    c.splits = int((np.bincount(ti[strong], minlength=nt + 1) >= 2).sum())
    c.merges = int((np.bincount(pj[strong], minlength=npd + 1) >= 2).sum())
    return c
