"""Ray's overhead: one simulated screen segmented by ``--executor local``, by ``--executor ray`` and by Ray Data's
``map_batches`` with ``FrameSegmenter`` (when Ray Data is installed) in the same run.

Local runs one process with ``workers`` pool threads; Ray starts a local instance and ``workers`` actors of one thread
each (the executor's defaults), and its time includes starting the instance and the actors loading the model: what a
user waits for. Both use the shipped model on onnxruntime's CPU provider and write the same tables; the ratio of their
frames/s is the figure to quote (absolute numbers on a shared machine are noisy).

    python -m nucleiscreen.bench.ray [--plates 4] [--size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nucleiscreen.engine.discover import discover
from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.ray_executor import FrameSegmenter, RayExecutor
from nucleiscreen.engine.run import numbered_frames, segment
from nucleiscreen.simulate import simulate_screen


def main(plates: int = 4, size: int = 256, workers: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_screen(Path(tmp) / "sim", plates=plates, fields=1, size=size, masks=False, progress=False)
        found = discover([sim.images])
        segment(found, Path(tmp) / "warm", options=SegmentOptions(progress=False, threads=1))  # caches, page cache
        t = time.perf_counter()
        local = segment(found, Path(tmp) / "local", options=SegmentOptions(progress=False, threads=workers))
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        ray = segment(found, Path(tmp) / "ray", options=SegmentOptions(progress=False),
                      executor=RayExecutor(workers=workers))
        t_ray = time.perf_counter() - t
        t_data = ray_data(found, workers)
    frames = found.frames.height
    assert local.frames == ray.frames == frames and not local.failed and not ray.failed
    print(f"{frames} frames of {size}x{size} px ({plates} plates), {workers} workers, {local.backend}")
    print(f"local (1 process, {workers} threads): {frames / t_local:8.1f} frames/s  ({t_local:.1f} s)")
    print(f"ray ({workers} actors, local instance): {frames / t_ray:8.1f} frames/s  ({t_ray:.1f} s, start included; "
          f"{ray.seconds:.1f} s from the actors' start, {t_ray - ray.seconds:.1f} s starting the instance)")
    print(f"ray / local: {t_local / t_ray:.2f}x (overhead {100 * (t_ray / t_local - 1):.0f} %; without the instance's "
          f"start {100 * (ray.seconds / t_local - 1):.0f} %)")
    if t_data is not None:
        print(f"ray data (map_batches, {workers} actors): {frames / t_data:8.1f} frames/s  ({t_data:.1f} s from the "
              f"instance's start; {t_local / t_data:.2f}x local, {t_ray / t_data:.2f}x the executor)")
    return {"frames": frames, "local_fps": frames / t_local, "ray_fps": frames / t_ray, "ratio": t_local / t_ray,
            "ratio_without_start": t_local / ray.seconds, "ray_data_fps": frames / t_data if t_data else None}


def ray_data(found, workers: int) -> float | None:
    """Seconds for Ray Data's ``map_batches`` with ``FrameSegmenter`` on an actor pool over the same frames, the
    instance's start included (None without Ray Data, which needs pandas: ``pip install 'ray[data]'``)."""
    import ray

    try:
        import ray.data
    except ImportError:
        print("ray data: not installed (pip install 'ray[data]'): not measured")
        return None
    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        table = numbered_frames(found).to_arrow()  # blocks made here: the actors hold every CPU, none left to split
        step = -(-table.num_rows // (4 * workers))
        ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
        rows = ds.map_batches(FrameSegmenter, batch_size=16, concurrency=workers, num_cpus=1).count()
    finally:
        ray.shutdown()
    assert rows == found.frames.height
    return time.perf_counter() - t


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plates", type=int, default=4, help="384-well plates of one field a well (default: 4)")
    ap.add_argument("--size", type=int, default=256, help="frame side in px (default: 256)")
    ap.add_argument("--workers", type=int, default=2, help="threads of the local run, actors of the Ray run")
    args = ap.parse_args()
    main(args.plates, args.size, args.workers)
