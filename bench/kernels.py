"""Post-processing speed: class map -> nuclei -> CellProfiler features, against OpenCV and scikit-image.

All three run in one process on the same 1104 x 1104 frame with ~300 nuclei (a dense simulated CX7 frame), one
thread, median of ``repeats`` runs, and are printed as ratios:

- nucleiscreen "full": ``measure(instances_from_classes(class_map), raw)`` (every feature but Solidity);
- OpenCV ``connectedComponentsWithStats`` on the same foreground mask, its fastest algorithm (labels, areas, bounding
  boxes and centroids only: the C++ anchor of issue #3);
- scikit-image ``label`` + ``regionprops_table`` for the same features.

Then frames/s of "full" on all cores (the kernels release the GIL, so plain threads scale).

    nucleiscreen bench kernels          # needs the [bench] extra for OpenCV and scikit-image
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nucleiscreen.errors import UserError
from nucleiscreen.kernels import classes_from_instances, connected_components, instances_from_classes, measure
from nucleiscreen.simulate import FrameSpec, synth_frame

SKIMAGE_PROPERTIES = ["label", "area", "centroid", "bbox", "perimeter", "axis_major_length", "axis_minor_length",
                      "eccentricity", "orientation", "equivalent_diameter_area", "extent", "intensity_mean",
                      "intensity_std", "intensity_max"]


def dense_frame(seed: int = 0, size: int = 1104, nuclei: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A raw frame and its 3-class map with about ``nuclei`` nuclei (the class map is the ideal network output)."""
    raw, labels = synth_frame(np.random.default_rng(seed), (size, size), FrameSpec(nuclei_per_frame=nuclei * 0.87))
    return raw, classes_from_instances(labels)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def main(repeats: int = 25, threads: int | None = None) -> dict:
    try:
        import cv2
        from skimage.measure import label, regionprops_table
    except ImportError as exc:
        raise UserError(f"the kernel benchmark needs {exc.name}: pip install 'nucleiscreen[bench]'") from None
    raw, classes = dense_frame()
    labels = instances_from_classes(classes)
    fg = (classes > 0).astype(np.uint8)
    cv2.setNumThreads(1)

    ms = {"opencv connectedComponentsWithStats": min(
        median_ms(lambda a=alg: cv2.connectedComponentsWithStatsWithAlgorithm(fg, 8, cv2.CV_32S, a), repeats)
        for alg in (cv2.CCL_BBDT, cv2.CCL_SPAGHETTI, cv2.CCL_SAUF))}
    ms["nucleiscreen connected_components"] = median_ms(lambda: connected_components(fg), repeats)
    ms["nucleiscreen instances_from_classes"] = median_ms(lambda: instances_from_classes(classes), repeats)
    ms["nucleiscreen measure"] = median_ms(lambda: measure(labels, raw), repeats)
    ms["nucleiscreen full"] = median_ms(lambda: measure(instances_from_classes(classes), raw), repeats)
    ms["scikit-image label + regionprops_table"] = median_ms(
        lambda: regionprops_table(label(classes == 1), raw, properties=SKIMAGE_PROPERTIES), max(3, repeats // 5))

    threads = threads or os.cpu_count() or 1
    frames = [dense_frame(seed)[::-1] for seed in range(1, 9)]  # (classes, raw) pairs
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda f: measure(instances_from_classes(f[0]), f[1]), frames))
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < 3.0:
            list(pool.map(lambda f: measure(instances_from_classes(f[0]), f[1]), frames))
            n += len(frames)
        fps = n / (time.perf_counter() - t)

    full = ms["nucleiscreen full"]
    print(f"1104x1104 frame, {labels.max()} objects, {100 * fg.mean():.0f}% foreground; one thread, median of "
          f"{repeats} runs")
    for name, value in ms.items():
        print(f"  {name:42s} {value:8.2f} ms")
    ratio_cv = full / ms["opencv connectedComponentsWithStats"]
    ratio_sk = ms["scikit-image label + regionprops_table"] / full
    print(f"full / OpenCV connectedComponentsWithStats: {ratio_cv:.2f}x  (target <= 1.0x)")
    print(f"scikit-image / full:                        {ratio_sk:.1f}x  (target >= 30x)")
    print(f"full on {threads} thread(s): {fps:.0f} frames/s")
    return {"ms": ms, "full_vs_opencv": ratio_cv, "skimage_vs_full": ratio_sk, "fps_all_cores": fps}


if __name__ == "__main__":
    main()
