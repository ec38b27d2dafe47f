"""``segment --executor ray``: one screen across the nodes and GPUs of a Ray cluster, with a single-node run's tables.

The driver discovers the screen and numbers its frames once (``ImageNumber`` is global), drops the frames the run
folder already holds (resume), and cuts the rest into *work units*: a plate, or a slice of ``unit_frames`` frames of a
larger plate. Each of ``workers`` Ray actors loads the model once and runs the single-node pipeline
(``pipeline.segment_frames``) on one unit at a time, writing the unit's part files into the shared run folder; the
driver hands the next unit to whichever actor finishes, shows one progress bar for the screen, and writes the manifest
(executor, workers, their backends) when all are done.

A lost worker (a killed process, a lost node) is restarted by Ray and its unit retried (``max_restarts``,
``max_task_retries``); the retry first drops the unit's frames already written, and part files are atomic, so no frame
ends up twice in the image table. Without ``address`` a local Ray instance is started with ``workers`` CPUs (and
stopped at the end). Ray is an optional extra: ``pip install -e ".[ray]"``.

For pipelines already built on Ray Data, ``FrameSegmenter`` is the engine's per-frame path as a ``map_batches``
callable class (rows of discovered frames in, image-table rows out), run by an actor pool::

    ds = ray.data.from_arrow(numbered_frames(discover(["/screen"])).to_arrow())  # ImageNumbers of the screen
    table = ds.map_batches(FrameSegmenter, batch_size=16, concurrency=2, num_cpus=1).to_pandas()
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl
from tqdm import tqdm

from nucleiscreen.engine.backends import CPU_MODEL
from nucleiscreen.engine.discover import Discovery
from nucleiscreen.engine.model import load_model_info
from nucleiscreen.engine.pipeline import (
    Scheduler,
    SegmentOptions,
    SegmentResult,
    frame_batches,
    make_segmenter,
    numbered_frames,
    pending_frames,
    plate_shapes,
    run_scales,
    segment_frames,
)
from nucleiscreen.engine.runfolder import (
    RunLock,
    new_token,
    prepare_run,
    remove_orphan_objects,
    run_model,
    write_manifest,
)
from nucleiscreen.engine.scale import plate_scales
from nucleiscreen.errors import UserError

UNIT_FRAMES = 4096  # a plate larger than this is cut into slices of it (a CX7 plate: 384 wells x 16 fields = 6,144)


class UnitWorker:
    """A Ray actor: the model loaded once, then one work unit after another into the run folder."""

    def __init__(self, model: str | None, options: dict, run: str, frame_schema: dict, shapes: dict, scales: dict):
        self.opts = SegmentOptions(**options)
        self.seg = make_segmenter(model, self.opts)
        self.run, self.schema, self.shapes, self.scales = Path(run), frame_schema, shapes, scales

    def segment(self, frames: pl.DataFrame) -> dict:
        """Segment the unit's frames not yet in the run folder (a retried unit resumes); its counts and timings."""
        todo = pending_frames(self.run, frames, frames["Metadata_Plate"].unique().to_list())
        result = segment_frames(self.seg, todo, self.run, self.opts, self.schema, shapes=self.shapes,
                                scales=self.scales)
        return {"frames": result.frames, "skipped": frames.height - todo.height, "failed_by": result.failed_by,
                "busy": result.busy, "backend": result.backend, "host": os.uname().nodename, "pid": os.getpid()}


def work_units(frames: pl.DataFrame, unit_frames: int = UNIT_FRAMES) -> Iterator[pl.DataFrame]:
    """The frames by plate, each plate in slices of at most ``unit_frames`` frames, in ImageNumber order."""
    for _, plate in frames.group_by("Metadata_Plate", maintain_order=True):
        yield from plate.iter_slices(n_rows=unit_frames)


def segment_on_ray(found: Discovery, out: str | Path, model: str | Path | None, opts: SegmentOptions,
                   address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                   unit_frames: int = UNIT_FRAMES, on_scale=None) -> SegmentResult:
    """``pipeline.segment`` with its frames spread over Ray actors (module docstring); ``on_scale`` as there."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'nucleiscreen[ray]'") from None
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if gpus_per_worker < 0:
        raise UserError("--gpus-per-worker must be 0 or more")
    # fail before starting anything; one model for every worker: without --model, the INT8 variant on CPU workers
    # with --backend auto (as a local run on a CPU), the FP32 model on GPU workers
    run = Path(out).resolve()  # the workers may start in another folder
    if model is None and not opts.overwrite:
        model = run_model(run)  # the model the folder was begun with, when there is one
    cpu_default = model is None and opts.backend == "auto" and not gpus_per_worker
    info = load_model_info(CPU_MODEL if cpu_default else model)
    with RunLock(run, opts.shard, new_token()):
        return _segment_on_ray(ray, found, run, info, opts, address, workers, gpus_per_worker, unit_frames, on_scale)


def _segment_on_ray(ray, found: Discovery, run: Path, info, opts: SegmentOptions, address: str | None,
                    workers: int | None, gpus_per_worker: float, unit_frames: int, on_scale) -> SegmentResult:
    settings = asdict(opts)
    prepare_run(run, info, settings, opts.overwrite, opts.retry_errors)
    remove_orphan_objects(run)
    screen = numbered_frames(found)  # plate sizes and scales come from the screen's frames, alike for every shard
    shapes = plate_shapes(screen)
    frames = numbered_frames(found, opts.shard)
    scales = {}
    if opts.pixel_size == "auto":  # estimated once, on the driver, with whatever backend it has
        scales = run_scales(make_segmenter(str(info.path), replace(opts, backend="auto")), run, screen, opts,
                            on_scale)
    todo = pending_frames(run, frames)
    units = list(work_units(todo, unit_frames))
    threads = opts.threads or 1  # per worker: one CPU each unless asked
    started = not ray.is_initialized()
    if started:
        try:
            if address is None:
                ray.init(num_cpus=workers * threads if workers else None, include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        if workers is None:  # as many as the cluster's CPUs (and GPUs) hold
            total = ray.cluster_resources()
            workers = max(1, int(total.get("CPU", 1)) // threads)
            if gpus_per_worker:
                workers = max(1, min(workers, int(total.get("GPU", 0) // gpus_per_worker)))
        worker_opts = asdict(replace(opts, threads=threads, progress=False, overwrite=False, retry_errors=False))
        actor = ray.remote(num_cpus=threads, num_gpus=gpus_per_worker, max_restarts=-1,
                           max_task_retries=-1)(UnitWorker)
        pool = [actor.remote(str(info.path), worker_opts, str(run), dict(found.frames.schema), shapes,
                              {p: e.scale for p, e in scales.items()})
                for _ in range(min(workers, len(units)))]  # none when all is done (resume)
        results, seconds = _dispatch(ray, pool, units, opts.progress)
    finally:
        if started:
            ray.shutdown()
    remove_orphan_objects(run)  # of workers lost mid-unit (their units were done again by others)
    busy, failed_by = Counter(), Counter()
    for r in results:
        busy.update(r["busy"])
        failed_by.update(r["failed_by"])
    result = SegmentResult(run, sum(r["frames"] for r in results),
                           frames.height - todo.height + sum(r["skipped"] for r in results),
                           failed_by.total(), seconds, dict(busy), ", ".join(sorted({r["backend"] for r in results})),
                           dict(failed_by), scales)
    write_manifest(run, info, settings, found, {
        "frames": result.frames, "skipped": result.skipped, "failed": result.failed, "seconds": round(seconds, 2),
        "busy_seconds": {k: round(v, 2) for k, v in busy.items()}, "failed_by_stage": result.failed_by,
        "backend": result.backend,
        "executor": "ray", "address": address or "local", "workers": len(pool),
        "gpus_per_worker": gpus_per_worker, "units": len(units),
        "worker_hosts": sorted({r["host"] for r in results}),
        **({"scales": {p: e.as_dict() for p, e in sorted(scales.items())}} if scales else {})}, shapes)
    return result


def _dispatch(ray, pool: list, units: list[pl.DataFrame], progress: bool) -> tuple[list[dict], float]:
    """Each actor takes the next unit as soon as it is done with its last: the results, one per unit, and the
    wall time."""
    t0 = time.time()
    queue = list(reversed(units))
    running = {}
    for worker in pool:
        if queue:
            unit = queue.pop()
            running[worker.segment.remote(unit)] = (worker, unit.height)
    results = []
    with tqdm(total=sum(u.height for u in units), unit="frame", desc="segment (ray)", disable=not progress) as bar:
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            worker, n = running.pop(ref)
            results.append(ray.get(ref))
            bar.update(n)
            if queue:
                unit = queue.pop()
                running[worker.segment.remote(unit)] = (worker, unit.height)
    return results, time.time() - t0


class _Rows:
    """The ``PartWriter`` interface, keeping the rows (image rows and error rows alike) in memory."""

    def __init__(self):
        self.rows: list[dict] = []

    def add_frame(self, row: dict, objects) -> None:
        self.rows.append({**row, "Stage": None, "Error": None})

    def add_error(self, row: dict) -> None:
        self.rows.append(row)


def screen_scales(found: Discovery, model: str | None = None, **options) -> dict[str, float]:
    """Each plate's scale for ``pixel_size="auto"`` (``engine/scale.py``: a sample of the plate's frames, as
    ``segment`` estimates it), for ``FrameSegmenter``'s ``scales``; keyword arguments are ``SegmentOptions``'."""
    seg = make_segmenter(model, SegmentOptions(**{**options, "pixel_size": "auto", "progress": False}))
    return {plate: e.scale for plate, e in plate_scales(seg, numbered_frames(found)).items()}


class FrameSegmenter:
    """The engine's per-frame path for Ray Data's ``map_batches`` (module docstring): a batch of rows with the
    discovery's columns (``PathName_DNA``, ``FileName_DNA``, ``Metadata_*``, and ``ImageNumber`` as
    ``pipeline.numbered_frames`` gives it; without one the frames are numbered within the batch) in, one image-table
    row per frame out (in ImageNumber order), with ``Stage`` and ``Error`` set for a frame that failed. The model is
    loaded once per actor; keyword arguments are ``SegmentOptions``' (backend, threads, min_contrast, ...).

    A batch is not a plate, so ``pixel_size="auto"`` takes each plate's scale from ``scales`` ({plate: factor}):
    ``screen_scales`` estimates them from the discovered screen as ``segment`` does, or a run folder's
    ``scales.json`` has them."""

    def __init__(self, model: str | None = None, scales: dict[str, float | dict] | None = None, **options):
        if options.get("pixel_size") == "auto" and scales is None:
            raise UserError("FrameSegmenter sees batches, not plates: with pixel_size='auto' give scales={plate: "
                            "factor} (screen_scales, or a run's scales.json), or give pixel_size in um")
        self.opts = SegmentOptions(**{"threads": 1, **options, "progress": False, "objects": False,
                                      "save_labels": False})
        self.seg = make_segmenter(model, self.opts)
        self.scales = {plate: float(s["scale"] if isinstance(s, dict) else s) for plate, s in (scales or {}).items()}
        self.pool = ThreadPoolExecutor(self.opts.threads)

    def __call__(self, batch: dict) -> dict:
        frames = pl.DataFrame({k: list(v) for k, v in batch.items()})
        if "ImageNumber" not in frames.columns:
            frames = frames.with_row_index("ImageNumber", offset=1).with_columns(pl.col("ImageNumber").cast(pl.Int64))
        if self.opts.pixel_size == "auto":
            missing = sorted(set(frames["Metadata_Plate"].to_list()) - set(self.scales))
            if missing:
                raise UserError(f"no scale for plate {missing[0]} in FrameSegmenter's scales")
        rows = _Rows()
        size = self.opts.batch_size or self.seg.backend.preferred_batch
        with tqdm(disable=True) as bar:
            Scheduler(self.seg, rows, self.opts, Path("."), self.pool, bar,
                      scales=self.scales if self.opts.pixel_size == "auto" else None).run_batches(
                frame_batches(frames, size), limit=2 * size * self.opts.threads)
        return pl.from_dicts(rows.rows, infer_schema_length=None).sort("ImageNumber").to_dict(as_series=False)
