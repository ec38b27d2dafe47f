"""The CPU paths side by side, in one run: the classic pipeline (smoothing, Otsu, watershed) and every shipped
model on onnxruntime, each scored and timed on the lab's validation frames.

Each method is the whole path from a decoded frame to its label image (normalization, resizing, the network, the
class map, the engine's post-processing; the classic pipeline's own steps), on one core: each runtime with one thread,
numba with one. The methods run interleaved, frame after frame, ``repeats`` times, and each frame's best time counts
(other tenants only ever slow a run down); core-seconds per frame is the mean over frames of those. Accuracy: F1 at IoU
0.5 / 0.7 / 0.9 against the lab's masks (``trainer/metrics.py``), the same figures ``predict`` + ``evaluate`` give.
Needs the [train] extra (scipy and scikit-image for the classic pipeline).

    nucleiscreen bench cpu [--frames 10] [--repeats 3]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from nucleiscreen.engine.backends import CPU_MODEL, auto_backend
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.readers import read_frame
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError

CLASSIC = "classic (Otsu + watershed)"
VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "aitslab-bioimaging1" / "val"


def methods() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each method: a raw frame in, its label image out. The classic pipeline, then every shipped model on
    onnxruntime (``latency.cpu_variants``), what ``--backend auto`` runs on a CPU marked."""
    from nucleiscreen.bench.latency import cpu_variants
    from nucleiscreen.trainer.baseline import segment_classic

    def network(model: str, backend: str) -> Callable[[np.ndarray], np.ndarray]:
        seg = Segmenter(model, backend, threads=1, pixel_size=None)
        return lambda raw: seg.instances(seg.classes([seg.prepare(raw)], raw.shape)[0], raw)

    pick = auto_backend(load_model_info(CPU_MODEL))
    out = {CLASSIC: segment_classic}
    for name, (model, backend) in cpu_variants().items():
        if backend != "torch":
            precision = load_model_info(model).card.get("precision", "fp32").upper()
            auto = ", the CPU default" if (model, backend) == (CPU_MODEL, pick) else ""
            out[f"{name} ({precision}{auto})"] = network(model, backend)
    return out


def main(frames: int = 10, repeats: int = 3, folder: Path = VAL) -> dict:
    from nucleiscreen.trainer.metrics import Counts, match

    images = sorted((folder / "images").iterdir())[:frames] if (folder / "images").is_dir() else []
    if not images:
        raise UserError(f"no validation frames in {folder}/images")
    raws = [read_frame(p) for p in images]
    truths = [read_frame(folder / "masks" / f"{p.stem}.tif") for p in images]
    numba.set_num_threads(1)
    runs = methods()
    best = {name: [np.inf] * len(raws) for name in runs}
    counts = {name: Counts() for name in runs}
    for r in range(repeats):
        for i, raw in enumerate(raws):
            for name, run in runs.items():
                t = time.perf_counter()
                labels = run(raw)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
                if r == 0:
                    counts[name].add(match(truths[i], labels))
    classic = float(np.mean(best[CLASSIC]))
    rows = {name: {"core_s_per_frame": float(np.mean(best[name])), "x_classic": float(np.mean(best[name])) / classic,
                   **{f"f1_{t}": counts[name].f1(t) for t in (0.5, 0.7, 0.9)}} for name in runs}
    print(f"CPU paths on {len(raws)} validation frames ({raws[0].shape[1]}x{raws[0].shape[0]}), one core, best of "
          f"{repeats}")
    print("| method | core-s/frame | × classic | F1@0.5 | F1@0.7 | F1@0.9 |\n|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['core_s_per_frame']:.3f} | {row['x_classic']:.2f} | {row['f1_0.5']:.3f} | "
              f"{row['f1_0.7']:.3f} | {row['f1_0.9']:.3f} |")
    return rows
