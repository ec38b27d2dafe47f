"""One ``segment`` of a screen into a run folder, whatever executes it: the one path of every run.

    segment(sources, out, ...)
        discover the screen (once, here, for every executor)
        -> Run: the run folder's life: its lock, the refusal of other models or result settings, the frames of this
           shard numbered over the whole screen, each plate's frame size and (``--pixel-size auto``) scale, the
           frames not yet done (resume)
        -> an executor segments them with ``pipeline.segment_frames``, the unit of work: ``LocalExecutor`` over all
           of them in this process, ``RayExecutor`` (``engine/ray_executor.py``) in units on Ray actors
        -> Run.close: the manifest (one function for both), the lock released

Re-running the same command resumes: frames already in the run folder's image or error tables are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import polars as pl

from nucleiscreen.engine.channels import Channels, frame_path, path_columns
from nucleiscreen.engine.discover import METADATA_COLUMNS, Discovery, discover
from nucleiscreen.engine.illumination import MODES as ILLUM_MODES
from nucleiscreen.engine.illumination import plate_functions
from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.engine.pipeline import SegmentOptions, SegmentResult, UnitSpec, make_segmenter, segment_frames
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.engine.runfolder import (
    PartWriter,
    RunLock,
    done_frames,
    new_token,
    prepare_run,
    remove_orphan_objects,
    run_model,
    write_json,
    write_manifest,
)
from nucleiscreen.engine.scale import ScaleEstimate, plate_scales
from nucleiscreen.engine.segmenter import Segmenter
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.illumination import IlluminationFunction


class Executor(Protocol):
    """How a run's frames get segmented: here (``LocalExecutor``) or on a Ray cluster (``RayExecutor``)."""

    name: str  # "local" or "ray", in the manifest

    def model(self, model: str | Path | None, opts: SegmentOptions) -> ModelInfo:
        """The model file the run uses (``model`` None: this executor's default), made ready to run where needed."""
        ...

    def scale_segmenter(self, info: ModelInfo, opts: SegmentOptions) -> Segmenter:
        """A Segmenter of that model, here, to estimate the plates' scales with (``--pixel-size auto``)."""
        ...

    def execute(self, run: Run) -> tuple[SegmentResult, dict]:
        """Segment ``run.todo`` into the run folder; the result and what the manifest adds about the execution."""
        ...


class LocalExecutor:
    """Every frame in this process, on a thread pool (``pipeline.segment_frames`` over all the frames to do).
    ``segmenter``: one made by the caller (a benchmark's own backend) instead of the options'."""

    name = "local"

    def __init__(self, segmenter: Segmenter | None = None):
        self.seg = segmenter

    def model(self, model: str | Path | None, opts: SegmentOptions) -> ModelInfo:
        if self.seg is None:
            self.seg = make_segmenter(model, opts)  # loads the backend: a model that cannot run fails first
        return self.seg.info

    def scale_segmenter(self, info: ModelInfo, opts: SegmentOptions) -> Segmenter:
        return self.seg

    def execute(self, run: Run) -> tuple[SegmentResult, dict]:
        return segment_frames(self.seg, run.todo, run.spec, run.token), {}


@dataclass
class Run:
    """A run folder's life around the executor (module docstring); ``open`` it with ``with``."""

    path: Path
    info: ModelInfo
    options: SegmentOptions
    found: Discovery
    token: str = field(default_factory=new_token)  # the lock's, and the local writer's part names
    frames: pl.DataFrame | None = None  # this shard's frames, numbered over the screen
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    scales: dict[str, ScaleEstimate] = field(default_factory=dict)
    todo: pl.DataFrame | None = None  # the frames not yet in the run folder

    def __enter__(self) -> Run:
        opts = self.options
        self._lock = RunLock(self.path, opts.shard, self.token)
        self._lock.__enter__()
        try:
            prepare_run(self.path, self.info, opts.settings(), opts.overwrite, opts.retry_errors)
            remove_orphan_objects(self.path)
            # plate sizes (and scales) come from the screen's frames, so every shard and resume agrees on them
            self.screen = numbered_frames(self.found)
            self.shapes = plate_shapes(self.screen, opts.channels.nuclei)
            self.frames = numbered_frames(self.found, opts.shard)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def estimate_scales(self, seg: Segmenter, on_scale: Callable[[str, ScaleEstimate], None] | None = None) -> None:
        """With ``--pixel-size auto``, each plate's scale: estimated once (``engine/scale.py``) and kept in
        ``RUN/scales.json``, so that resumes and other shards use the same; then the frames still to do."""
        if self.options.pixel_size == "auto":
            self.scales = run_scales(seg, self.path, self.screen, self.options.channels.nuclei, on_scale)
        self.todo = pending_frames(self.path, self.frames, self.options.channels)

    def estimate_illumination(self, on_illum: Callable[[str, str, IlluminationFunction, int], None] | None = None
                              ) -> None:
        """With ``--illum plate``, each plate's illumination function per marker channel, estimated once
        (``engine/illumination.py``) and kept in ``RUN/illum/``."""
        opts = self.options
        if opts.illum == "plate" and opts.channels.markers:
            plate_functions(self.path, self.screen, opts.channels.markers, self.shapes, opts.threads or 1, on_illum)

    def record_incomplete(self) -> None:
        """The fields that lack a channel's frame, as rows of the error table (stage ``discover``, the channels
        named), once: not again on resume, and by one shard only."""
        incomplete = self.found.incomplete
        if incomplete is None or not incomplete.height or (self.options.shard or (0, 1))[0] != 0:
            return
        keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
        parts = sorted((self.path / "errors").glob("part-*.parquet"))
        if parts:
            known = pl.scan_parquet(parts).filter(pl.col("Stage") == "discover").select(keys).collect()
            incomplete = incomplete.join(known, on=keys, how="anti")
        writer = PartWriter(self.path, max(1, incomplete.height), dict(self.found.frames.schema),
                            self.options.channels, token=self.token)
        numbers = self.options.channels.number
        for rec in incomplete.iter_rows(named=True):
            missing = ", ".join(f"{name} (channel {numbers[name]})" for name in rec["Missing"])
            writer.add_error(rec, "discover", f"no frame of {missing} for this field")
        writer.flush()

    @property
    def spec(self) -> UnitSpec:
        return UnitSpec(self.path, self.options, dict(self.found.frames.schema), self.shapes,
                        {p: e.scale for p, e in self.scales.items()})

    def close(self, result: SegmentResult, execution: dict, executor: str) -> SegmentResult:
        """The run's result with its skipped frames and scales, and this session in the manifest."""
        result.skipped += self.frames.height - self.todo.height
        result.scales = self.scales
        write_manifest(self.path, self.info, self.options.settings(), self.found, {
            "frames": result.frames, "skipped": result.skipped, "failed": result.failed,
            "seconds": round(result.seconds, 2), "busy_seconds": {k: round(v, 2) for k, v in result.busy.items()},
            "failed_by_stage": result.failed_by, "executor": executor, "backend": result.backend, **execution,
            **({"scales": {p: e.as_dict() for p, e in sorted(self.scales.items())}} if self.scales else {})},
            self.shapes)
        return result


def segment(
    sources: Sequence[str | Path] | Discovery,
    out: str | Path,
    model: str | Path | None = None,
    options: SegmentOptions | None = None,
    pattern: str = "auto",
    on_discovered: Callable[[Discovery], None] | None = None,
    on_scale: Callable[[str, ScaleEstimate], None] | None = None,
    segmenter: Segmenter | None = None,
    executor: Executor | None = None,
    on_illum: Callable[[str, str, IlluminationFunction, int], None] | None = None,
) -> SegmentResult:
    """Segment every frame of the discovered screen into the run folder ``out`` (module docstring).

    ``on_discovered`` is called with the discovery before any frame is read (the CLI prints its summary),
    ``on_scale`` with each plate's scale estimated with ``--pixel-size auto``, ``on_illum(plate, channel, function,
    frames)`` with each illumination function estimated with ``--illum plate``; ``executor``: where the frames are
    segmented (default: here); ``segmenter``: a Segmenter made by the caller (a benchmark's own backend), in place of
    the one ``model`` and ``options`` describe, for the local executor."""
    opts = options or SegmentOptions()
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if opts.checkpoint_seconds < 0:
        raise UserError("--checkpoint-seconds must be 0 or more")
    if executor is None:
        executor = LocalExecutor(segmenter)
    elif segmenter is not None:
        raise UserError("a Segmenter goes with the local executor only")
    run_dir = Path(out).absolute()  # workers may start in another folder
    if model is None and segmenter is None and not opts.overwrite:
        model = run_model(run_dir)  # the model the folder was begun with, when there is one
    info = executor.model(model, opts)  # fail first
    found = sources if isinstance(sources, Discovery) else discover(sources, pattern, channels=opts.channels)
    illum = opts.illum or ("plate" if found.names.markers else "none")
    if illum not in ILLUM_MODES:
        raise UserError(f"--illum {illum}: choose one of {', '.join(ILLUM_MODES)}")
    opts = replace(opts, channels=found.names, illum=illum)  # resolved, for the workers and the manifest
    if on_discovered is not None:
        on_discovered(found)
    with Run(run_dir, info, opts, found) as run:
        run.record_incomplete()
        run.estimate_scales(executor.scale_segmenter(info, opts) if opts.pixel_size == "auto" else None, on_scale)
        run.estimate_illumination(on_illum)
        result, execution = executor.execute(run)
        return run.close(result, execution, executor.name)


def run_scales(seg: Segmenter, run: Path, frames: pl.DataFrame, nuclei: str,
               on_scale: Callable[[str, ScaleEstimate], None] | None = None) -> dict[str, ScaleEstimate]:
    """The scale of each plate of ``frames``: estimated once (``engine/scale.py``) on the ``nuclei`` channel's frames
    and kept in ``RUN/scales.json``, so that resumes and other shards use the same."""
    path = run / "scales.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    scales = plate_scales(seg, frames, known, on_scale, nuclei)
    if set(scales) - set(known):
        write_json(path, {p: e.as_dict() for p, e in sorted(scales.items())})
    return scales


def numbered_frames(found: Discovery, shard: tuple[int, int] | None = None) -> pl.DataFrame:
    """The discovered frames with their ``ImageNumber`` (1.., global over the screen), the shard's only."""
    frames = found.frames.with_row_index("ImageNumber", offset=1).with_columns(pl.col("ImageNumber").cast(pl.Int64))
    if shard is not None:  # shards share one run folder: part names are unique, ImageNumbers global
        k, n = shard
        frames = frames.filter((pl.col("ImageNumber") - 1) % n == k)
    return frames.select("ImageNumber", *METADATA_COLUMNS, *found.names.columns())


def plate_shapes(frames: pl.DataFrame, channel: str, sample: int = 5) -> dict[str, tuple[int, int]]:
    """Each plate's frame size (rows, columns): the most common among the first ``sample`` readable frames of
    ``channel`` in ImageNumber order (ties: the earliest frame's), so that every run, shard and resume of a screen
    agrees on it."""
    shapes = {}
    for (plate,), rows in frames.sort("ImageNumber").group_by("Metadata_Plate", maintain_order=True):
        seen = []
        for rec in rows.select(path_columns(channel)).iter_rows(named=True):
            try:
                seen.append(read_frame(frame_path(rec, channel)).shape)
            except FrameReadError:
                continue
            if len(seen) == sample:
                break
        if seen:
            shapes[plate] = max(seen, key=lambda s: (seen.count(s), -seen.index(s)))
    return shapes


def pending_frames(run: Path, frames: pl.DataFrame, channels: Channels,
                   plates: Sequence[str] | None = None) -> pl.DataFrame:
    """``frames`` less those already in the run's image or error tables (resume); ``plates``: the plates ``frames``
    come from, when not all (only their parts are read)."""
    key = list(path_columns(channels.nuclei))
    done = done_frames(run, key, plates)
    return frames.join(done, on=key, how="anti", maintain_order="left")
