"""Post-processing speed: class map -> nuclei -> CellProfiler features, against OpenCV and scikit-image.

Everything runs in one process on the same 1104 x 1104 frame with ~300 nuclei (a dense simulated CX7 frame and its
ideal 3-class map), one thread. The contenders are timed in turns (one call each per round, the order rotating, so a
busy neighbour on a shared machine slows all of them alike) and the medians of ``repeats`` rounds are compared, with
the caches as the other contenders left them ("warm") and after reading 64 MB before each call ("cold": everything
comes from memory, as when a pipeline decodes and infers between two frames):

- nucleiscreen "full": ``segment_and_measure(class_map, raw)`` -- the label image and every feature but Solidity;
- nucleiscreen "summary": ``segment_and_summarize(class_map, raw)`` -- the label image and the image-table values
  (the per-frame path of the engine);
- OpenCV ``connectedComponentsWithStats`` on the foreground mask (class > 0), the fastest of its algorithms for this
  frame (labels, areas, bounding boxes and centroids only: the C++ anchor of issue #3);
- scikit-image ``label`` of the same mask + ``regionprops_table`` for the same features as "full" (timed on its own:
  it is compute-bound, and its memory churn would leave the calls after it cold).

Then the parts on their own (``instances_from_classes``, ``measure`` of a label image, ``connected_components``,
Solidity, the network input's ``normalize`` and the faint-object filter ``filter_faint``, which the engine runs before
"summary" when the model card has one), and frames/s of "full" on one thread and on all cores (the kernels release
the GIL, so plain threads scale).

    nucleiscreen bench kernels          # needs the [bench] extra for OpenCV and scikit-image
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nucleiscreen.errors import UserError
from nucleiscreen.kernels.contrast import filter_faint
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import measure, segment_and_measure, segment_and_summarize
from nucleiscreen.kernels.normalize import normalize
from nucleiscreen.kernels.runs import connected_components
from nucleiscreen.kernels.targets import classes_from_instances
from nucleiscreen.simulate import FrameSpec, synth_frame

SKIMAGE_PROPERTIES = ["label", "area", "centroid", "bbox", "perimeter", "axis_major_length", "axis_minor_length",
                      "eccentricity", "orientation", "equivalent_diameter_area", "extent", "intensity_mean",
                      "intensity_std", "intensity_max"]


def dense_frame(seed: int = 0, size: int = 1104, nuclei: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A raw frame and its 3-class map with about ``nuclei`` nuclei (the class map is the ideal network output)."""
    raw, labels = synth_frame(np.random.default_rng(seed), (size, size), FrameSpec(nuclei_per_frame=nuclei * 0.87))
    return raw, classes_from_instances(labels)


def interleaved_ms(contenders: dict, repeats: int, cold: bool = False) -> dict[str, float]:
    """Median milliseconds per call of each contender, timed in rotating turns after one warm-up call each; ``cold``:
    each call after reading 64 MB (more than the caches hold)."""
    flush = np.ones(2**23)
    for fn in contenders.values():
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if cold:
                flush.sum()
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
    return {name: 1000.0 * float(np.median(v)) for name, v in times.items()}


def frames_per_second(frames: list[tuple[np.ndarray, np.ndarray]], threads: int, seconds: float = 3.0) -> float:
    """Frames/s of ``segment_and_measure`` over ``frames`` ((class map, raw) pairs) on ``threads`` threads."""
    def full(f):
        return segment_and_measure(*f)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(full, frames))  # warm-up: per-thread scratch buffers
        n = 0
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            list(pool.map(full, frames))
            n += len(frames)
        return n / (time.perf_counter() - t)


def main(repeats: int = 40, threads: int | None = None) -> dict:
    try:
        import cv2
        from skimage.measure import label, regionprops_table
    except ImportError as exc:
        raise UserError(f"the kernel benchmark needs {exc.name}: pip install 'nucleiscreen[bench]'") from None
    load = os.getloadavg()[0]  # other work on the machine slows every contender, and the threads most
    raw, classes = dense_frame()
    labels = instances_from_classes(classes)
    fg = (classes > 0).astype(np.uint8)
    image = normalize(raw)
    cv2.setNumThreads(1)
    algorithms = {"BBDT": cv2.CCL_BBDT, "SAUF": cv2.CCL_SAUF, "Spaghetti": cv2.CCL_SPAGHETTI}
    fastest = interleaved_ms(
        {name: lambda a=a: cv2.connectedComponentsWithStatsWithAlgorithm(fg, 8, cv2.CV_32S, a)
         for name, a in algorithms.items()}, max(10, repeats // 2))
    best = min(fastest, key=fastest.get)

    contenders = {
        "nucleiscreen full (segment_and_measure)": lambda: segment_and_measure(classes, raw),
        "nucleiscreen summary (segment_and_summarize)": lambda: segment_and_summarize(classes, raw),
        f"OpenCV connectedComponentsWithStats ({best})":
            lambda: cv2.connectedComponentsWithStatsWithAlgorithm(fg, 8, cv2.CV_32S, algorithms[best]),
    }
    warm = interleaved_ms(contenders, repeats)
    cold = interleaved_ms(contenders, repeats, cold=True)
    # (scikit-image alone: its memory churn would leave every call after it cold)
    sk = interleaved_ms({"scikit-image label + regionprops_table": lambda: regionprops_table(
        label(fg, connectivity=2), raw, properties=SKIMAGE_PROPERTIES)}, max(6, repeats // 4))
    parts = interleaved_ms({
        "nucleiscreen instances_from_classes": lambda: instances_from_classes(classes),
        "nucleiscreen measure (label image)": lambda: measure(labels, raw),
        "nucleiscreen connected_components": lambda: connected_components(fg),
        "nucleiscreen measure(..., solidity=True)": lambda: measure(labels, raw, solidity=True),
        "nucleiscreen normalize": lambda: normalize(raw),
        "nucleiscreen filter_faint (min_contrast 0.15)": lambda: filter_faint(classes, image, 0.15),
        "nucleiscreen filter_faint + slivers + growth": lambda: filter_faint(
            classes, image, 0.15, min_edge_area=35, grow_area=200, grow_level=0.65),
    }, max(10, repeats // 2))

    cores = threads or os.cpu_count() or 1
    frames = [dense_frame(seed)[::-1] for seed in range(1, 9)]  # (classes, raw) pairs
    fps_one = frames_per_second(frames, 1)
    fps_all = fps_one if cores == 1 else frames_per_second(frames, cores)

    print(f"{raw.shape[1]}x{raw.shape[0]} frame, {labels.max()} nuclei, {100 * fg.mean():.0f}% foreground; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load average {load:.1f} before); "
          f"one thread, medians of {repeats} interleaved runs")
    print(f"  {'':48s} {'warm':>8s} {'cold':>8s}")
    for name in warm:
        print(f"  {name:48s} {warm[name]:8.2f} {cold[name]:8.2f} ms")
    for name, value in (sk | parts).items():
        print(f"  {name:48s} {value:8.2f} {'':8s} ms")
    full, summary, opencv = warm.values()
    cold_full, cold_summary, cold_opencv = cold.values()
    skimage_ms = sk["scikit-image label + regionprops_table"]
    ratios = {"full_vs_opencv": full / opencv, "full_vs_opencv_cold": cold_full / cold_opencv,
              "summary_vs_opencv": summary / opencv, "summary_vs_opencv_cold": cold_summary / cold_opencv,
              "skimage_vs_full": skimage_ms / full, "skimage_vs_full_cold": skimage_ms / cold_full}
    print(f"full / OpenCV:       {ratios['full_vs_opencv']:.2f}x warm, {ratios['full_vs_opencv_cold']:.2f}x cold "
          "(target <= 1.0x)")
    print(f"summary / OpenCV:    {ratios['summary_vs_opencv']:.2f}x warm, {ratios['summary_vs_opencv_cold']:.2f}x cold")
    print(f"scikit-image / full: {ratios['skimage_vs_full']:.0f}x warm, {ratios['skimage_vs_full_cold']:.0f}x against "
          "full cold (target >= 30x)")
    print(f"full: {fps_one:.0f} frames/s on 1 thread, {fps_all:.0f} frames/s on {cores} threads")
    return {"ms": warm | sk | parts, "ms_cold": cold, **ratios, "fps_one_thread": fps_one, "fps_all_cores": fps_all,
            "threads": cores}


if __name__ == "__main__":
    main()
