"""The streaming stages that segment frames into a run folder (``engine/runfolder.py``): decode -> network -> nuclei
-> rows. ``engine/run.py`` owns a run folder's life around them (lock, resume, scales, manifest) and hands them the
frames to do, on this machine or on Ray actors (``engine/ray_executor.py``).

The stages, with the reading of the next batch and the post-processing of the last overlapping the network:

    Segmenter.load (pool threads: read, histogram, quality, network input)
        -> Segmenter.submit/collect (the backend; two batches in flight on an asynchronous one)
        -> Segmenter.measure (pool threads; the numba kernels release the GIL)
        -> PartWriter: RUN/images/plate=<plate>/part-*.parquet, RUN/objects/..., RUN/errors/...

A frame that cannot be read or processed becomes a row of the error table (its file columns, ``Stage``, ``Error``)
and the run goes on. The frame table is walked in slices, so memory stays flat however large the screen.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from nucleiscreen.engine.channels import Channels, frame_path, path_columns
from nucleiscreen.engine.illumination import Illumination
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.runfolder import PartWriter, write_labels
from nucleiscreen.engine.scale import ScaleEstimate
from nucleiscreen.engine.segmenter import Frame, FrameCheckError, Pending, Segmenter
from nucleiscreen.errors import StorageError, UserError
from nucleiscreen.kernels.measure import DEFAULT_MICRONUCLEUS_AREA
from nucleiscreen.kernels.postprocess import OVERRIDABLE
from nucleiscreen.kernels.quality import frame_quality


@dataclass(frozen=True)
class SegmentOptions:
    """The settings of one ``segment`` (the CLI's options), passed whole to every stage and worker."""

    backend: str = "auto"
    batch_size: int | None = None  # None: the backend's preferred batch (1 on the CPU, 16 on a GPU)
    threads: int | None = None
    objects: bool = False
    save_labels: bool = False
    micronucleus_area: int = DEFAULT_MICRONUCLEUS_AREA
    post: dict = field(default_factory=dict)  # PostProcessing overrides in the frames' pixels (kernels/postprocess.py;
    # --min-area etc.); a setting not given is the model card's
    pixel_size: float | str | None = None  # um per pixel of the frames; None: the model's; "auto": estimated per
    # plate (engine/scale.py)
    channels: Channels = Channels()
    illum: str | None = None  # plate: each plate's marker channels illumination-corrected (engine/illumination.py);
    # none; None: plate when the channels have markers
    part_frames: int = 4096
    checkpoint_seconds: float = 60.0  # parts are also written after this much work: a kill loses at most about it
    progress: bool = True
    overwrite: bool = False  # empty the run folder first
    retry_errors: bool = False  # attempt the frames of the error table again
    shard: tuple[int, int] | None = None  # (k, n): this process takes the frames with (ImageNumber - 1) % n == k

    def settings(self) -> dict:
        """The options as the manifest records them: flat, each post-processing override under its own name (None:
        the card's), the channels as a dict."""
        d = asdict(self)
        post = d.pop("post")
        d["channels"] = self.channels.as_dict()
        return {**d, **{k: post.get(k) for k in OVERRIDABLE}}


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


@dataclass
class Outcome:
    """What became of one frame: its image-table row and, with ``--objects``, its objects; or the stage where it
    failed and why."""

    rec: dict  # the frame's row of the frame table
    row: dict | None = None
    objects: pl.DataFrame | None = None
    stage: str | None = None  # check, decode, infer or postprocess
    error: str | None = None


class Scheduler:
    """The stages of one unit of frames, so that the network never waits for the host and the host never holds
    more than a few batches: the frames of batch k+1 are read on the pool while batch k is submitted, batch k-1
    is collected only after batch k was submitted (an asynchronous backend computes one while the other copies),
    and the class maps go to the pool for post-processing; finished frames come out oldest first
    (``run_batches``)."""

    def __init__(self, seg: Segmenter, opts: SegmentOptions, run: Path, pool: ThreadPoolExecutor,
                 shapes: dict[str, tuple[int, int]] | None = None, scales: dict[str, float] | None = None):
        self.seg, self.opts, self.run, self.pool = seg, opts, run, pool
        self.nuclei = opts.channels.nuclei
        self.markers = opts.channels.markers
        self.illum = Illumination(run) if opts.illum == "plate" and self.markers else None
        self.shapes = shapes or {}  # each plate's frame size (``plate_shapes``); a frame of another is refused
        # the Segmenter of each plate whose frames are resized for inference (--pixel-size auto)
        self.segs = {plate: seg.at_scale(s) for plate, s in (scales or {}).items() if s != seg.scale}
        self.busy: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()  # stages run on several threads; += on a dict entry is not atomic
        self.inflight: tuple[list, Pending] | None = None  # a batch submitted to the network, not yet collected
        self.post: deque[tuple[dict, Future]] = deque()  # frames being post-processed, oldest first
        self.done: deque[Outcome] = deque()  # finished or failed, not yet handed out

    def run_batches(self, batches: Iterator[list[dict]], limit: int) -> Iterator[Outcome]:
        """The outcome of every frame of ``batches``; at most ``limit`` frames wait for their post-processing."""
        ahead = [self.pool.submit(self._load, rec) for rec in next(batches, [])]
        while ahead:
            loaded = [f.result() for f in ahead]
            ahead = [self.pool.submit(self._load, rec) for rec in next(batches, [])]
            self._network(loaded)
            self._finished(limit)
            yield from self._hand_out()
        if self.inflight is not None:
            self._finish(*self.inflight)
        self._finished(0)
        yield from self._hand_out()

    def _hand_out(self) -> Iterator[Outcome]:
        while self.done:
            yield self.done.popleft()

    # -- pool threads ---------------------------------------------------------------------------------------------
    def _spent(self, stage: str, since: float) -> None:
        with self._lock:
            self.busy[stage] += time.perf_counter() - since

    def _load(self, rec: dict) -> tuple[dict, Frame | FrameReadError]:
        """A field's frames, read together: the nuclei channel's for the network, the others (illumination-corrected
        with ``--illum plate``) for the measurements; any one that cannot be read fails the field, with its reason."""
        t = time.perf_counter()
        try:
            frame = self._seg(rec).load(frame_path(rec, self.nuclei), self.shapes.get(rec["Metadata_Plate"]),
                                        self.nuclei)
            for name in self.markers:
                raw = read_marker(frame_path(rec, name), name, frame.raw.shape)
                frame.quality.update(frame_quality(raw, None, name))
                function = self.illum.for_frame(rec["Metadata_Plate"], name) if self.illum is not None else None
                frame.markers[name] = (raw, function)  # corrected as it is measured
        except FrameReadError as exc:
            frame = exc
        self._spent("decode", t)
        return rec, frame

    def _postprocess(self, rec: dict, frame: Frame, classes) -> tuple[dict, pl.DataFrame | None]:
        t = time.perf_counter()
        opts = self.opts
        labels, summary, objects = self._seg(rec).measure(classes, frame.raw, opts.objects, opts.save_labels,
                                                          opts.micronucleus_area, frame.rescale, self.nuclei,
                                                          frame.markers if opts.channels.named else None)
        if opts.save_labels:
            folder = self.run / "labels" / f"plate={rec['Metadata_Plate']}"
            path = folder / (Path(rec[path_columns(self.nuclei)[1]]).stem + "_labels.tif")
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
        self.done.append(Outcome(rec, stage=stage, error=error))

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

    def _finished(self, limit: int) -> None:
        """Move the post-processed frames at the head of the queue to ``done``; wait until at most ``limit`` are
        pending (back-pressure: the readers never run far ahead of the post-processing)."""
        while self.post and (self.post[0][1].done() or len(self.post) > limit):
            rec, fut = self.post.popleft()
            try:
                row, objects = fut.result()
            except StorageError:
                raise
            except Exception as exc:  # a kernel failing on one frame must not stop the screen
                self._fail(rec, "postprocess", f"{type(exc).__name__}: {exc}")
            else:
                self.done.append(Outcome(rec, row, objects))


def read_marker(path: Path, channel: str, shape: tuple[int, int]) -> np.ndarray:
    """A marker channel's frame, refused (``FrameReadError``, the channel named) when it cannot be read, is not one
    2-D frame of the nuclei frame's ``shape``, or has non-finite pixels."""
    try:
        raw = read_frame(path)
    except FrameReadError as exc:
        raise FrameReadError(f"{channel} channel: {exc}") from None
    if raw.shape != tuple(shape):
        size = "x".join(map(str, raw.shape[::-1]))
        raise FrameCheckError(f"{path.name}: the {channel} frame is {size}, the field's nuclei frame "
                              f"{shape[1]}x{shape[0]}")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise FrameCheckError(f"{path.name}: the {channel} frame has NaN or infinite pixels")
    return raw


def frame_batches(frames: pl.DataFrame, size: int) -> Iterator[list[dict]]:
    """The frame table's rows as dicts, ``size`` at a time, made a slice at a time (not all at once)."""
    for chunk in frames.iter_slices(n_rows=size * max(1, 4096 // size)):
        rows = chunk.to_dicts()
        for i in range(0, len(rows), size):
            yield rows[i:i + size]


@dataclass(frozen=True)
class UnitSpec:
    """What any worker needs to segment a unit of a run's frames into its folder: the run folder, the options, the
    frame table's schema, each plate's frame size and scale (``engine/run.py`` measures them once per run)."""

    run: Path
    options: SegmentOptions
    frame_schema: dict[str, pl.DataType]
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)


def segment_frames(seg: Segmenter, frames: pl.DataFrame, spec: UnitSpec, token: str | None = None) -> SegmentResult:
    """Segment ``frames`` (``numbered_frames``' columns) into the prepared run folder of ``spec``: the unit of work
    that a local run does once over all its frames and a Ray actor over each unit it is given (no discovery, checks
    or manifest: ``engine/run.py``). ``token``: the writer's part-name token (the run lock's, for a local run)."""
    opts = spec.options
    batch_size = opts.batch_size or seg.backend.preferred_batch
    threads = opts.threads or os.cpu_count() or 1
    writer = PartWriter(spec.run, opts.part_frames, spec.frame_schema, opts.channels, opts.checkpoint_seconds, token)
    failed: Counter[str] = Counter()
    t_start = time.time()
    write = 0.0
    with ThreadPoolExecutor(threads) as pool, tqdm(total=frames.height, unit="frame", desc="segment",
                                                   disable=not opts.progress) as bar:
        scheduler = Scheduler(seg, opts, spec.run, pool, spec.shapes, spec.scales)
        for outcome in scheduler.run_batches(frame_batches(frames, batch_size), limit=2 * batch_size * threads):
            t = time.perf_counter()
            if outcome.row is None:
                failed[outcome.stage] += 1
                writer.add_error(outcome.rec, outcome.stage, outcome.error)
            else:
                writer.add_frame(outcome.row, outcome.objects)
            write += time.perf_counter() - t
            bar.update()
    writer.flush()
    busy = {**scheduler.busy, "write": write} if frames.height else dict(scheduler.busy)
    return SegmentResult(spec.run, frames.height, 0, failed.total(), time.time() - t_start, busy,
                         seg.backend.description, dict(failed))


def make_segmenter(model: str | Path | None, opts: SegmentOptions) -> Segmenter:
    """The Segmenter that ``opts`` describe (backend, threads, post-processing overrides, pixel size)."""
    if isinstance(opts.pixel_size, str) and opts.pixel_size != "auto":
        raise UserError(f"--pixel-size takes a number of um or auto, not {opts.pixel_size!r}")
    return Segmenter(model, opts.backend, opts.threads, opts.post,
                     None if opts.pixel_size == "auto" else opts.pixel_size)
