"""How well the illumination function is recovered from a sample of frames: the worst error of the flat field over
the field against the true vignetting (30 % fall-off at the corners), for CellProfiler's estimates and ours.

Frames: the simulator's two marker channels (``synth_markers``: a punctate lysosome-like stain, a cell-body stain)
at 1104^2, and stationary toy frames (disks of 9 px radius, 180 a frame, offset 300, glow 30). Estimates:

- CellProfiler, median filter: the mean image, a median filter of 200 px (scipy), divided by its 2nd percentile;
- CellProfiler, polynomial: the mean image fitted by a quadratic, divided by its minimum;
- ours (kernels/illumination.py): the specimen's mean above each pixel's background, fitted by a quadratic.

    python docs/experiments/illumination_accuracy.py [FRAMES]     # FRAMES per sample (default 128): a few minutes
"""

import sys

import numpy as np
from scipy.ndimage import median_filter

from nucleiscreen.kernels.illumination import BLOCK, block_mean, illumination_function, polynomial_fit
from nucleiscreen.simulate import FRAME_SIZE, synth_frame, synth_markers

n = int(sys.argv[1]) if len(sys.argv) > 1 else 128
size = FRAME_SIZE
yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
vignette = 1.0 - 0.3 * (((yy - size / 2) / size) ** 2 + ((xx - size / 2) / size) ** 2) * 2
truth = block_mean(vignette)
truth /= truth.min()


def toy(rng):
    signal = np.full((size, size), 30.0)
    for cy, cx in rng.uniform(-9, size + 9, (180, 2)):
        y0, y1, x0, x1 = int(max(0, cy - 9)), int(min(size, cy + 10)), int(max(0, cx - 9)), int(min(size, cx + 10))
        if y0 < y1 and x0 < x1:
            disk = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 < 81
            signal[y0:y1, x0:x1][disk] = 800 * rng.lognormal(0, 0.15)
    return np.clip(rng.poisson(signal * vignette / 2) * 2 + 300 + rng.normal(0, 6, signal.shape), 0, 65535)


samples = {"lysosome marker (d1)": [], "cell-body stain (d2)": [], "toy disks": []}
for i in range(n):
    rng, cells = np.random.default_rng([5, i]), []
    _, nuclei = synth_frame(rng, (size, size), cells=cells)
    markers = synth_markers(rng, nuclei, cells)
    samples["lysosome marker (d1)"].append(block_mean(markers.lyso))
    samples["cell-body stain (d2)"].append(block_mean(markers.cell))
    samples["toy disks"].append(block_mean(toy(rng)))

print(f"| frames {n} | CellProfiler, median filter | CellProfiler, polynomial | ours |")
print("|---|---|---|---|")
for name, grids in samples.items():
    grids = np.stack(grids)
    mean = grids.mean(0)
    median = median_filter(mean, size=200 // BLOCK, mode="nearest")
    by_median = np.maximum(median, np.percentile(median, 2)) / np.percentile(median, 2)
    fit = polynomial_fit(mean)
    errors = [np.abs(f / truth - 1).max() for f in (by_median, fit / fit.min(),
                                                     illumination_function(grids, (size, size)).flat)]
    print(f"| {name} | " + " | ".join(f"{e:.1%}" for e in errors) + " |")
