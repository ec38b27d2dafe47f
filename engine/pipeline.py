"""Segment the frames of a screen into a run folder (``engine/runfolder.py``): decode -> network -> nuclei -> rows.

The stages, with the reading of the next batch and the post-processing of the last overlapping the network:

    discover (engine/discover.py) -> Segmenter.load (pool threads: read, histogram, quality, network input)
        -> Segmenter.submit/collect (the backend; two batches in flight on an asynchronous one)
        -> Segmenter.measure (pool threads; the numba kernels release the GIL)
        -> PartWriter: RUN/images/plate=<plate>/part-*.parquet, RUN/objects/..., RUN/errors/..., RUN/manifest.json

A frame that cannot be read or processed becomes a row of the error table (``PathName_DNA``, ``FileName_DNA``,
``Stage``, ``Error``) and the run goes on. Re-running the same command resumes: frames already in the run folder's
image or error tables are skipped. The frame table is walked in slices, so memory stays flat however large the screen.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
from tqdm import tqdm

from nucleiscreen.engine.discover import FRAME_COLUMNS, Discovery, discover
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.runfolder import (
    PartWriter,
    RunLock,
    done_frames,
    error_row,
    new_token,
    prepare_run,
    remove_orphan_objects,
    run_model,
    write_json,
    write_labels,
    write_manifest,
)
from nucleiscreen.engine.scale import ScaleEstimate, plate_scales
from nucleiscreen.engine.segmenter import Frame, FrameCheckError, Pending, Segmenter
from nucleiscreen.errors import StorageError, UserError


@dataclass
class SegmentOptions:
    backend: str = "auto"
    batch_size: int | None = None  # None: the backend's preferred batch (1 on the CPU, 16 on a GPU)
    threads: int | None = None
    objects: bool = False
    save_labels: bool = False
    micronucleus_area: int = 100
    min_area: int | None = None  # px; smaller objects are dropped. None: the model card's (what it validated with)
    min_contrast: float | None = None  # the faint-object filter's threshold; None: the model card's, 0: no filter
    min_edge_area: int | None = None  # px; objects touching the frame's edge with fewer are dropped. None: the card's
    grow_area: int | None = None  # px; smaller objects grow into their bright outer ring. None: the card's, 0: none
    pixel_size: float | str | None = None  # um per pixel of the frames; None: the model's; "auto": estimated per
    # plate (engine/scale.py)
    part_frames: int = 4096
    checkpoint_seconds: float = 60.0  # parts are also written after this much work: a kill loses at most about it
    progress: bool = True
    overwrite: bool = False  # empty the run folder first
    retry_errors: bool = False  # attempt the frames of the error table again
    shard: tuple[int, int] | None = None  # (k, n): this process takes the frames with (ImageNumber - 1) % n == k


def parse_shard(text: str, environ: dict | None = None) -> tuple[int, int]:
    """``K/N`` (0-based K) or ``slurm`` (SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT of a job array, whose
    task ids must run 0..N-1 (``--array=0-N``)."""
    env = os.environ if environ is None else environ
    if text == "slurm":
        try:
            k, n = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UserError("--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                            "(run it inside an sbatch --array job)") from None
    else:
        try:
            k, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/8, or slurm") from None
    if not 0 <= k < n:
        raise UserError(f"--shard {k}/{n}: K must be in 0..N-1")
    return k, n


@dataclass
class SegmentResult:
    run: Path
    frames: int
    skipped: int
    failed: int
    seconds: float
    busy: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    failed_by: dict[str, int] = field(default_factory=dict)  # failed frames by stage (decode, infer, postprocess)
    scales: dict[str, ScaleEstimate] = field(default_factory=dict)  # --pixel-size auto: each plate's


class Scheduler:
    """The stages of one ``segment`` call, so that the network never waits for the host and the host never holds
    more than a few batches: the frames of batch k+1 are read on the pool while batch k is submitted, batch k-1
    is collected only after batch k was submitted (an asynchronous backend computes one while the other copies),
    and the class maps go to the pool for post-processing; finished frames are written oldest first."""

    def __init__(self, seg: Segmenter, writer: PartWriter, opts: SegmentOptions, run: Path, pool: ThreadPoolExecutor,
                 bar, shapes: dict[str, tuple[int, int]] | None = None, scales: dict[str, float] | None = None):
        self.seg, self.writer, self.opts, self.run, self.pool, self.bar = seg, writer, opts, run, pool, bar
        self.shapes = shapes or {}  # each plate's frame size (``plate_shapes``); a frame of another is refused
        # the Segmenter of each plate whose frames are resized for inference (--pixel-size auto)
        self.segs = {plate: seg.at_scale(s) for plate, s in (scales or {}).items() if s != seg.scale}
        self.busy: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()  # stages run on several threads; += on a dict entry is not atomic
        self.failed_by: Counter[str] = Counter()  # failed frames by stage
        self.inflight: tuple[list, Pending] | None = None  # a batch submitted to the network, not yet collected
        self.post: deque[tuple[dict, Future]] = deque()  # frames being post-processed, oldest first

    def run_batches(self, batches: Iterator[list[dict]], limit: int) -> None:
        ahead = [self.pool.submit(self._load, rec) for rec in next(batches, [])]
        while ahead:
            loaded = [f.result() for f in ahead]
            ahead = [self.pool.submit(self._load, rec) for rec in next(batches, [])]
            self._network(loaded)
            self._write(limit)
        if self.inflight is not None:
            self._finish(*self.inflight)
        self._write(0)

    # -- pool threads ---------------------------------------------------------------------------------------------
    def _spent(self, stage: str, since: float) -> None:
        with self._lock:
            self.busy[stage] += time.perf_counter() - since

    def _load(self, rec: dict) -> tuple[dict, Frame | FrameReadError]:
        t = time.perf_counter()
        try:
            frame = self._seg(rec).load(Path(rec["PathName_DNA"]) / rec["FileName_DNA"],
                                        self.shapes.get(rec["Metadata_Plate"]))
        except FrameReadError as exc:
            frame = exc
        self._spent("decode", t)
        return rec, frame

    def _postprocess(self, rec: dict, frame: Frame, classes) -> tuple[dict, pl.DataFrame | None]:
        t = time.perf_counter()
        opts = self.opts
        labels, summary, objects = self._seg(rec).measure(classes, frame.raw, opts.objects, opts.save_labels,
                                                          opts.micronucleus_area, frame.rescale)
        if opts.save_labels:
            folder = self.run / "labels" / f"plate={rec['Metadata_Plate']}"
            path = folder / (Path(rec["FileName_DNA"]).stem + "_labels.tif")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_labels(path, labels)
            except OSError as exc:  # a full disk is not this frame's fault: stop the run (it resumes)
                raise StorageError(path, exc) from exc
        self._spent("postprocess", t)
        return {**rec, **frame.quality, **summary}, objects

    def _seg(self, rec: dict) -> Segmenter:
        return self.segs.get(rec["Metadata_Plate"], self.seg)

    # -- the main thread --------------------------------------------------------------------------------------------
    def _fail(self, rec: dict, stage: str, error: str) -> None:
        self.failed_by[stage] += 1
        self.writer.add_error(error_row(rec, stage, error))
        self.bar.update()

    def _network(self, loaded: list[tuple[dict, Frame | FrameReadError]]) -> None:
        """Submit the readable frames of one batch in groups of one input shape and dtype (a batch is one array)."""
        groups: dict[tuple, list] = defaultdict(list)
        for rec, frame in loaded:
            if isinstance(frame, FrameReadError):
                self._fail(rec, "check" if isinstance(frame, FrameCheckError) else "decode", str(frame))
            else:
                groups[frame.input.shape, frame.input.dtype, frame.raw.shape].append((rec, frame))
        for (size, _, _), items in groups.items():
            if self.inflight is not None and self.inflight[1].size != size:
                self._finish(*self.inflight)  # a backend keeps buffers for one frame size: drain before another
                self.inflight = None
            t = time.perf_counter()
            try:
                pending = self.seg.submit([f.input for _, f in items], items[0][1].raw.shape)
            except Exception as exc:  # e.g. out of memory on one odd-sized batch: record, go on
                self._spent("infer", t)
                for rec, _ in items:
                    self._fail(rec, "infer", f"{type(exc).__name__}: {exc}")
                continue
            self._spent("infer", t)
            # The previous batch is collected only now, so an asynchronous backend computes this one meanwhile.
            if self.inflight is not None:
                self._finish(*self.inflight)
            self.inflight = (items, pending)

    def _finish(self, items: list, pending: Pending) -> None:
        """Collect a submitted batch and hand its frames to the pool for post-processing."""
        self.inflight = None
        t = time.perf_counter()
        try:
            classes = self.seg.collect(pending)
        except Exception as exc:
            self._spent("infer", t)
            for rec, _ in items:
                self._fail(rec, "infer", f"{type(exc).__name__}: {exc}")
            return
        self._spent("infer", t)
        for (rec, frame), cls in zip(items, classes):
            self.post.append((rec, self.pool.submit(self._postprocess, rec, frame, cls)))

    def _write(self, limit: int) -> None:
        """Write the finished frames at the head of the queue; wait until at most ``limit`` are pending
        (back-pressure: the readers never run far ahead of the post-processing)."""
        while self.post and (self.post[0][1].done() or len(self.post) > limit):
            rec, fut = self.post.popleft()
            t = time.perf_counter()
            try:
                row, objects = fut.result()
            except StorageError:
                raise
            except Exception as exc:  # a kernel failing on one frame must not stop the screen
                self.failed_by["postprocess"] += 1
                self.writer.add_error(error_row(rec, "postprocess", f"{type(exc).__name__}: {exc}"))
            else:
                self.writer.add_frame(row, objects)
            self._spent("write", t)
            self.bar.update()


def frame_batches(frames: pl.DataFrame, size: int) -> Iterator[list[dict]]:
    """The frame table's rows as dicts, ``size`` at a time, made a slice at a time (not all at once)."""
    for chunk in frames.iter_slices(n_rows=size * max(1, 4096 // size)):
        rows = chunk.to_dicts()
        for i in range(0, len(rows), size):
            yield rows[i:i + size]


def segment(
    sources: Sequence[str | Path] | Discovery,
    out: str | Path,
    model: str | Path | None = None,
    options: SegmentOptions | None = None,
    pattern: str = "auto",
    channel: int | None = None,
    on_discovered: Callable[[Discovery], None] | None = None,
    on_scale: Callable[[str, ScaleEstimate], None] | None = None,
    segmenter: Segmenter | None = None,
) -> SegmentResult:
    """Segment every frame of the discovered screen into the run folder ``out`` (see the module docstring).

    ``on_discovered`` is called with the discovery before any frame is read (the CLI prints its summary),
    ``on_scale`` with each plate's scale estimated with ``--pixel-size auto``.
    ``segmenter``: a Segmenter made by the caller (a benchmark's own backend), in place of the one ``model`` and
    ``options`` describe."""
    opts = options or SegmentOptions()
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if opts.checkpoint_seconds < 0:
        raise UserError("--checkpoint-seconds must be 0 or more")
    if model is None and segmenter is None and not opts.overwrite:
        model = run_model(Path(out))  # the model the folder was begun with, when there is one
    seg = segmenter or make_segmenter(model, opts)  # fail first
    found = sources if isinstance(sources, Discovery) else discover(sources, pattern, channel)
    if on_discovered is not None:
        on_discovered(found)
    run = Path(out)
    settings = asdict(opts)
    token = new_token()
    with RunLock(run, opts.shard, token):
        prepare_run(run, seg.info, settings, opts.overwrite, opts.retry_errors)
        remove_orphan_objects(run)
        screen = numbered_frames(found)  # plate sizes and scales come from the screen's frames, alike for every shard
        shapes = plate_shapes(screen)
        frames = numbered_frames(found, opts.shard)
        scales = run_scales(seg, run, screen, opts, on_scale)
        todo = pending_frames(run, frames)
        result = segment_frames(seg, todo, run, opts, found.frames.schema, token, shapes,
                                {p: e.scale for p, e in scales.items()})
        result.skipped, result.scales = frames.height - todo.height, scales
        write_manifest(run, seg.info, settings, found, {
            "frames": result.frames, "skipped": result.skipped, "failed": result.failed,
            "seconds": round(result.seconds, 2), "busy_seconds": {k: round(v, 2) for k, v in result.busy.items()},
            "failed_by_stage": result.failed_by, "executor": "local", "backend": result.backend,
            **({"scales": {p: e.as_dict() for p, e in sorted(scales.items())}} if scales else {})}, shapes)
    return result


def make_segmenter(model: str | Path | None, opts: SegmentOptions) -> Segmenter:
    """The Segmenter that ``opts`` describe (backend, threads, post-processing overrides, pixel size)."""
    if isinstance(opts.pixel_size, str) and opts.pixel_size != "auto":
        raise UserError(f"--pixel-size takes a number of um or auto, not {opts.pixel_size!r}")
    return Segmenter(model, opts.backend, opts.threads, opts.min_area,
                     None if opts.pixel_size == "auto" else opts.pixel_size, opts.min_contrast, opts.min_edge_area,
                     opts.grow_area)


def run_scales(seg: Segmenter, run: Path, frames: pl.DataFrame, opts: SegmentOptions,
               on_scale: Callable[[str, ScaleEstimate], None] | None = None) -> dict[str, ScaleEstimate]:
    """With ``--pixel-size auto``, the scale of each plate of ``frames``: estimated once (``engine/scale.py``) and
    kept in ``RUN/scales.json``, so that resumes and other shards use the same; {} otherwise."""
    if opts.pixel_size != "auto":
        return {}
    path = run / "scales.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    scales = plate_scales(seg, frames, known, on_scale)
    if set(scales) - set(known):
        write_json(path, {p: e.as_dict() for p, e in sorted(scales.items())})
    return scales


def numbered_frames(found: Discovery, shard: tuple[int, int] | None = None) -> pl.DataFrame:
    """The discovered frames with their ``ImageNumber`` (1.., global over the screen), the shard's only."""
    frames = found.frames.with_row_index("ImageNumber", offset=1).with_columns(pl.col("ImageNumber").cast(pl.Int64))
    if shard is not None:  # shards share one run folder: part names are unique, ImageNumbers global
        k, n = shard
        frames = frames.filter((pl.col("ImageNumber") - 1) % n == k)
    return frames.select("ImageNumber", *FRAME_COLUMNS)


def plate_shapes(frames: pl.DataFrame, sample: int = 5) -> dict[str, tuple[int, int]]:
    """Each plate's frame size (rows, columns): the most common among its first ``sample`` readable frames in
    ImageNumber order (ties: the earliest frame's), so that every run, shard and resume of a screen agrees on it."""
    shapes = {}
    for (plate,), rows in frames.sort("ImageNumber").group_by("Metadata_Plate", maintain_order=True):
        seen = []
        for path, name in rows.select("PathName_DNA", "FileName_DNA").iter_rows():
            try:
                seen.append(read_frame(Path(path) / name).shape)
            except FrameReadError:
                continue
            if len(seen) == sample:
                break
        if seen:
            shapes[plate] = max(seen, key=lambda s: (seen.count(s), -seen.index(s)))
    return shapes


def pending_frames(run: Path, frames: pl.DataFrame, plates: Sequence[str] | None = None) -> pl.DataFrame:
    """``frames`` less those already in the run's image or error tables (resume); ``plates``: the plates ``frames``
    come from, when not all (only their parts are read)."""
    done = done_frames(run, plates)
    return frames.join(done, on=["PathName_DNA", "FileName_DNA"], how="anti", maintain_order="left")


def segment_frames(seg: Segmenter, frames: pl.DataFrame, run: Path, opts: SegmentOptions,
                   frame_schema: dict[str, pl.DataType], token: str | None = None,
                   shapes: dict[str, tuple[int, int]] | None = None,
                   scales: dict[str, float] | None = None) -> SegmentResult:
    """Segment ``frames`` (``numbered_frames``' columns) into the prepared run folder ``run``: the stages of the
    module docstring, without discovery, checks or manifest (what a distributed worker runs on its work unit).
    ``shapes``: each plate's frame size (``plate_shapes``), to refuse a frame of another; ``scales``: each plate's
    scale (``run_scales``) where it is not the Segmenter's."""
    batch_size = opts.batch_size or seg.backend.preferred_batch
    threads = opts.threads or os.cpu_count() or 1
    writer = PartWriter(run, opts.part_frames, frame_schema, opts.checkpoint_seconds, token)
    t_start = time.time()
    with ThreadPoolExecutor(threads) as pool, tqdm(total=frames.height, unit="frame", desc="segment",
                                                   disable=not opts.progress) as bar:
        scheduler = Scheduler(seg, writer, opts, run, pool, bar, shapes, scales)
        scheduler.run_batches(frame_batches(frames, batch_size), limit=2 * batch_size * threads)
    writer.flush()
    return SegmentResult(run, frames.height, 0, scheduler.failed_by.total(), time.time() - t_start,
                         dict(scheduler.busy), seg.backend.description, dict(scheduler.failed_by))
