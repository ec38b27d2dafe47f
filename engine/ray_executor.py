"""``segment --executor ray``: one screen across the nodes and GPUs of a Ray cluster, with a single-node run's tables.

The driver runs the one path of every run (``engine/run.py``: discovery, the run folder's lock, the frames numbered
once over the screen, resume, scales, the manifest); ``RayExecutor`` is its executor: it cuts the frames still to do
into *work units* (a plate, or a slice of ``unit_frames`` frames of a larger plate), and each of ``workers`` Ray actors
loads the model once and runs the unit function of a local run (``pipeline.segment_frames``) on one unit at a time,
writing the unit's part files into the shared run folder; the driver hands the next unit to whichever actor finishes
and shows one progress bar for the screen.

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
from dataclasses import replace
from pathlib import Path

import polars as pl

from nucleiscreen.engine.backends import CPU_MODEL
from nucleiscreen.engine.discover import Discovery
from nucleiscreen.engine.model import ModelInfo, load_model_info
from nucleiscreen.engine.pipeline import (
    Scheduler,
    SegmentOptions,
    SegmentResult,
    UnitSpec,
    frame_batches,
    make_segmenter,
    segment_frames,
)
from nucleiscreen.engine.run import Run, numbered_frames, pending_frames
from nucleiscreen.engine.runfolder import remove_orphan_objects
from nucleiscreen.engine.scale import plate_scales
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError

UNIT_FRAMES = 4096  # a plate larger than this is cut into slices of it (a CX7 plate: 384 wells x 16 fields = 6,144)


class UnitWorker:
    """A Ray actor: the model loaded once, then one work unit after another into the run folder, with the same unit
    function a local run uses (``pipeline.segment_frames``)."""

    def __init__(self, model: str, spec: UnitSpec):
        self.spec = spec
        self.seg = make_segmenter(model, spec.options)

    def segment(self, frames: pl.DataFrame) -> dict:
        """Segment the unit's frames not yet in the run folder (a retried unit resumes); its counts and timings."""
        spec = self.spec
        todo = pending_frames(spec.run, frames, spec.options.channels, frames["Metadata_Plate"].unique().to_list())
        result = segment_frames(self.seg, todo, spec)
        return {"frames": result.frames, "skipped": frames.height - todo.height, "failed_by": result.failed_by,
                "busy": result.busy, "backend": result.backend, "host": os.uname().nodename, "pid": os.getpid()}


def work_units(frames: pl.DataFrame, unit_frames: int = UNIT_FRAMES) -> Iterator[pl.DataFrame]:
    """The frames by plate, each plate in slices of at most ``unit_frames`` frames, in ImageNumber order."""
    for _, plate in frames.group_by("Metadata_Plate", maintain_order=True):
        yield from plate.iter_slices(n_rows=unit_frames)


class RayExecutor:
    """``engine/run.py``'s executor on a Ray cluster (module docstring): ``address`` None starts a local instance;
    ``workers`` None: as many as the cluster's CPUs (and GPUs, with ``gpus_per_worker``) hold."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 unit_frames: int = UNIT_FRAMES):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'nucleiscreen[ray]'") from None
        if workers is not None and workers < 1:
            raise UserError("--workers must be at least 1")
        if gpus_per_worker < 0:
            raise UserError("--gpus-per-worker must be 0 or more")
        self.ray, self.address, self.workers, self.gpus_per_worker = ray, address, workers, gpus_per_worker
        self.unit_frames = unit_frames

    def model(self, model: str | Path | None, opts: SegmentOptions) -> ModelInfo:
        """One model for every worker: without ``model``, the INT8 variant on CPU workers with ``--backend auto`` (as
        a local run on a CPU picks), the FP32 model on GPU workers."""
        cpu_default = model is None and opts.backend == "auto" and not self.gpus_per_worker
        return load_model_info(CPU_MODEL if cpu_default else model)

    def scale_segmenter(self, info: ModelInfo, opts: SegmentOptions) -> Segmenter:
        return make_segmenter(str(info.path), replace(opts, backend="auto"))  # on the driver, whatever it has

    def execute(self, run: Run) -> tuple[SegmentResult, dict]:
        ray, opts = self.ray, run.options
        units = list(work_units(run.todo, self.unit_frames))
        threads = opts.threads or 1  # per worker: one CPU each unless asked
        started = not ray.is_initialized()
        if started:
            try:
                if self.address is None:
                    ray.init(num_cpus=self.workers * threads if self.workers else None, include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        try:
            workers = self.workers
            if workers is None:  # as many as the cluster's CPUs (and GPUs) hold
                total = ray.cluster_resources()
                workers = max(1, int(total.get("CPU", 1)) // threads)
                if self.gpus_per_worker:
                    workers = max(1, min(workers, int(total.get("GPU", 0) // self.gpus_per_worker)))
            spec = replace(run.spec, options=replace(opts, threads=threads, progress=False, overwrite=False,
                                                     retry_errors=False))
            actor = ray.remote(num_cpus=threads, num_gpus=self.gpus_per_worker, max_restarts=-1,
                               max_task_retries=-1)(UnitWorker)
            pool = [actor.remote(str(run.info.path), spec)
                    for _ in range(min(workers, len(units)))]  # none when all is done (resume)
            results, seconds = _dispatch(ray, pool, units, opts.progress)
        finally:
            if started:
                ray.shutdown()
        remove_orphan_objects(run.path)  # of workers lost mid-unit (their units were done again by others)
        busy, failed_by = Counter(), Counter()
        for r in results:
            busy.update(r["busy"])
            failed_by.update(r["failed_by"])
        result = SegmentResult(run.path, sum(r["frames"] for r in results), sum(r["skipped"] for r in results),
                               failed_by.total(), seconds, dict(busy),
                               ", ".join(sorted({r["backend"] for r in results})), dict(failed_by))
        return result, {"address": self.address or "local", "workers": len(pool),
                        "gpus_per_worker": self.gpus_per_worker, "units": len(units),
                        "worker_hosts": sorted({r["host"] for r in results})}


def _dispatch(ray, pool: list, units: list[pl.DataFrame], progress: bool) -> tuple[list[dict], float]:
    """Each actor takes the next unit as soon as it is done with its last: the results, one per unit, and the
    wall time."""
    from tqdm import tqdm

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


def screen_scales(found: Discovery, model: str | None = None, **options) -> dict[str, float]:
    """Each plate's scale for ``pixel_size="auto"`` (``engine/scale.py``: a sample of the plate's frames, as
    ``segment`` estimates it), for ``FrameSegmenter``'s ``scales``; keyword arguments are ``SegmentOptions``'."""
    seg = make_segmenter(model, SegmentOptions(**{**options, "pixel_size": "auto", "progress": False}))
    scales = plate_scales(seg, numbered_frames(found), channel=found.names.nuclei)
    return {plate: e.scale for plate, e in scales.items()}


class FrameSegmenter:
    """The engine's per-frame path for Ray Data's ``map_batches`` (module docstring): a batch of rows with the
    discovery's columns (each channel's ``PathName_<name>``, ``FileName_<name>``, ``Metadata_*``, and ``ImageNumber``
    as ``run.numbered_frames`` gives it; without one the frames are numbered within the batch) in, one image-table
    row per frame out (in ImageNumber order), with ``Stage`` and ``Error`` set for a frame that failed. The model is
    loaded once per actor; keyword arguments are ``SegmentOptions``' (backend, threads, channels, ...).

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
        size = self.opts.batch_size or self.seg.backend.preferred_batch
        scheduler = Scheduler(self.seg, self.opts, Path("."), self.pool,
                              scales=self.scales if self.opts.pixel_size == "auto" else None)
        rows = [{**o.row, "Stage": None, "Error": None} if o.row is not None else
                {**o.rec, "Stage": o.stage, "Error": o.error}
                for o in scheduler.run_batches(frame_batches(frames, size), limit=2 * size * self.opts.threads)]
        return pl.from_dicts(rows, infer_schema_length=None).sort("ImageNumber").to_dict(as_series=False)
