"""Segment the frames of a screen into a run folder: decode -> normalize -> U-Net -> nuclei -> measurements.

Stages, with decoding of the next batch and post-processing of the last overlapping the network:

    discover (engine/discover.py) -> read_frame + normalize (threads) -> batch -> backend.infer
        -> segment_and_summarize, or segment_and_measure with --objects (threads; numba kernels release the GIL)
        -> writer: RUN/images/plate=<plate>/part-*.parquet, RUN/objects/..., RUN/errors/..., RUN/manifest.json

A frame that cannot be read or processed becomes a row of the error table (``PathName_DNA``, ``FileName_DNA``,
``Stage``, ``Error``) and the run goes on. Re-running the same command resumes: frames already in the run folder's
image or error tables are skipped. Part files are written under a temporary name and renamed, so an interrupted run
never leaves a half-written part behind.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import tifffile

import nucleiscreen
from nucleiscreen.engine.backends import create_backend
from nucleiscreen.engine.discover import FRAME_COLUMNS, Discovery, discover
from nucleiscreen.engine.model import ModelInfo, load_model_info
from nucleiscreen.engine.readers import FrameReadError, read_frame
from nucleiscreen.errors import UserError
from nucleiscreen.kernels.contrast import DEFAULT_CONTRAST_AREA, INNER, OUTER, filter_faint, filters
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import segment_and_measure, segment_and_summarize, summarize_objects
from nucleiscreen.kernels.normalize import normalize
from nucleiscreen.kernels.quality import QUALITY_COLUMNS, frame_quality
from nucleiscreen.kernels.resize import resize


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
    pixel_size: float | None = None  # um per pixel of the frames; None: the model's
    part_frames: int = 4096
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


@dataclass
class _Pending:
    """A batch submitted to the network: the backend's token (or, for a synchronous backend, its result)."""

    token: object
    is_async: bool
    n: int
    size: tuple[int, int]  # the prepared frames' size (before padding)
    shape: tuple[int, int] | None  # the raw frames' shape, when the class maps must be resized back to it


class Segmenter:
    """One model on one backend: raw frame -> network input -> class map -> instance labels.

    The pieces the streaming pipeline, ``predict`` and the benchmarks share, so a frame is treated the same way
    everywhere.
    """

    def __init__(self, model: str | Path | ModelInfo | None = None, backend: str = "auto",
                 threads: int | None = None, min_area: int | None = None, pixel_size: float | None = None,
                 min_contrast: float | None = None, min_edge_area: int | None = None, grow_area: int | None = None):
        self.info = model if isinstance(model, ModelInfo) else load_model_info(model)
        self.backend = create_backend(backend, self.info, threads=threads)
        self.norm = self.info.normalization
        self.multiple = self.info.multiple
        # Frames at another pixel size (a 10x or 40x screen) are resized to the model's before inference and the
        # class map back after it, so nuclei have the size the network was trained on.
        model_px = self.info.card.get("pixel_size_um")
        if pixel_size is not None and pixel_size <= 0:
            raise UserError(f"--pixel-size must be positive, got {pixel_size}")
        self.scale = pixel_size / model_px if pixel_size and model_px and abs(pixel_size / model_px - 1) > 0.02 \
            else 1.0
        # Post-processing runs on the class map at the frame's own size, so the card's lengths and areas (in model
        # pixels) are converted to frame pixels; a --min-area given here is in frame pixels already.
        post, s = self.info.postprocessing, self.scale
        self.post_args = {}
        if "max_grow" in post:
            self.post_args["max_grow"] = math.ceil(post["max_grow"] / s)
        if "min_area" in post:
            self.post_args["min_area"] = max(1, round(post["min_area"] / s**2))
        if min_area is not None:
            if min_area < 0:
                raise UserError(f"--min-area must be 0 or more pixels, got {min_area}")
            self.post_args["min_area"] = min_area
        if min_contrast is not None and not 0 <= min_contrast < 1:
            raise UserError(f"--min-contrast must be in [0, 1) (a fraction of the frame's range), got {min_contrast}")
        # the faint-object filter (kernels/contrast.py)
        self.min_contrast = float(post.get("min_contrast", 0.0) if min_contrast is None else min_contrast)
        self.contrast_area = max(1, round(int(post.get("contrast_area", DEFAULT_CONTRAST_AREA)) / s**2))
        self.contrast_ring = (round(INNER / s), max(round(OUTER / s), round(INNER / s) + 1))
        if min_edge_area is not None and min_edge_area < 0:
            raise UserError(f"--min-edge-area must be 0 or more pixels, got {min_edge_area}")
        self.min_edge_area = round(int(post.get("min_edge_area", 0)) / s**2) if min_edge_area is None \
            else min_edge_area
        # the growth of small objects into their bright outer ring (kernels/contrast.py)
        if grow_area is not None and grow_area < 0:
            raise UserError(f"--grow-area must be 0 or more pixels, got {grow_area}")
        self.grow = {"grow_area": round(int(post.get("grow_area", 0)) / s**2) if grow_area is None else grow_area,
                     "grow_level": float(post.get("grow_level", 0.5))}

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """The normalized network input of a raw frame (float32; resized to the model's pixel size if needed)."""
        x = normalize(raw, self.norm)
        if self.scale != 1.0:
            x = resize(x, (max(1, round(x.shape[0] * self.scale)), max(1, round(x.shape[1] * self.scale))))
        return x

    def submit(self, inputs: list[np.ndarray], shape: tuple[int, int] | None = None) -> _Pending:
        """Start the network on same-shape prepared frames, in one batch padded to the network's multiple. On a
        backend with ``submit``/``collect`` (TensorRT: copies and compute on a CUDA stream) this returns at once,
        so the caller can prepare the next batch meanwhile; otherwise the result is computed here."""
        h, w = inputs[0].shape
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        batch = np.stack([np.pad(x, ((0, ph), (0, pw)), mode="reflect") if ph or pw else x for x in inputs])
        if hasattr(self.backend, "submit"):
            return _Pending(self.backend.submit(batch[:, None]), True, len(inputs), (h, w), shape)
        return _Pending(self.backend.infer(batch[:, None]), False, len(inputs), (h, w), shape)

    def collect(self, pending: _Pending) -> list[np.ndarray]:
        """The class maps of a submitted batch (waits for it), cropped back and resized to the raw frames' shape
        when the frames were rescaled."""
        out = self.backend.collect(pending.token) if pending.is_async else pending.token
        h, w = pending.size
        maps = [np.ascontiguousarray(out[k, :h, :w]) for k in range(pending.n)]
        if pending.shape is not None and pending.shape != (h, w):
            maps = [resize(m, pending.shape, nearest=True) for m in maps]
        return maps

    def classes(self, inputs: list[np.ndarray], shape: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Class maps of same-shape prepared frames, in one batch padded to the network's multiple; resized to the
        raw frames' ``shape`` when the frames were rescaled."""
        return self.collect(self.submit(inputs, shape))

    def erase_faint(self, classes: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The class map without the objects the model card's faint-object filter and edge-sliver limit reject, and
        with its small objects grown (``classes`` itself when the card asks for none of these or nothing changes)."""
        if not filters(self.min_contrast, self.min_edge_area, self.grow["grow_area"]):
            return classes
        return filter_faint(classes, normalize(raw, self.norm), self.min_contrast, self.contrast_area,
                            self.contrast_ring, self.min_edge_area, **self.grow, **self.post_args)

    def instances(self, classes: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Instance labels (int32) of a class map of the raw frame ``raw``."""
        return instances_from_classes(self.erase_faint(classes, raw), **self.post_args)

    def measure(self, classes: np.ndarray, raw: np.ndarray, objects: bool, labels: bool,
                micronucleus_area: int) -> tuple[np.ndarray | None, dict, pl.DataFrame | None]:
        """Nuclei of a class map measured on the raw frame in one pass (the fused kernels): the label image (None
        unless ``labels``), the image-table values and, with ``objects``, the per-nucleus table."""
        classes = self.erase_faint(classes, raw)
        if objects:  # the frame summary comes from the object table
            lab, table = segment_and_measure(classes, raw, label_image=labels, **self.post_args)
            return lab, summarize_objects(table, micronucleus_area=micronucleus_area), table
        lab, summary = segment_and_summarize(classes, raw, micronucleus_area=micronucleus_area, label_image=labels,
                                             **self.post_args)
        return lab, summary, None


class _Writer:
    """Buffers rows per table and plate; writes part files atomically (temp name, then rename)."""

    def __init__(self, run: Path, part_frames: int):
        self.run, self.part_frames = run, part_frames
        self.rows: dict[tuple[str, str], list] = defaultdict(list)
        self.token = uuid.uuid4().hex[:8]
        self.count = 0

    def add(self, table: str, plate: str | None, rows) -> None:
        key = (table, plate or "")
        self.rows[key].append(rows)
        if table == "images" and len(self.rows[key]) >= self.part_frames:  # memory stays flat however many frames
            # A plate's objects go out with its image rows, objects first: resuming skips only frames whose image
            # row was written, so their objects are on disk too.
            self.flush(("objects", key[1]))
            self.flush(key)

    def flush(self, key: tuple[str, str] | None = None) -> None:
        for k in [key] if key else sorted(self.rows, key=lambda k: k[0] == "images"):  # image rows last
            items = self.rows.pop(k, [])
            if not items:
                continue
            table, plate = k
            if isinstance(items[0], pl.DataFrame):
                df = pl.concat(items, how="diagonal_relaxed")
            else:  # dict rows; None in the first rows must not fix a column's type, so infer over all of them
                df = pl.from_dicts(items, infer_schema_length=None)
            folder = self.run / table / f"plate={plate}" if table != "errors" else self.run / table
            folder.mkdir(parents=True, exist_ok=True)
            self.count += 1
            name = f"part-{self.token}-{self.count:05d}.parquet"
            tmp = folder / f".{name}.tmp"
            df.write_parquet(tmp)
            os.replace(tmp, folder / name)


# Settings that change the numbers in the tables: a run folder is resumed only with the same ones.
RESULT_SETTINGS = ("micronucleus_area", "min_area", "min_contrast", "min_edge_area", "grow_area", "objects",
                   "pixel_size")


def _done_frames(run: Path, tables: Sequence[str]) -> set[tuple[str, str]]:
    """(PathName_DNA, FileName_DNA) of the frames already in the run's given tables."""
    done: set[tuple[str, str]] = set()
    for table in tables:
        parts = sorted((run / table).rglob("part-*.parquet")) if (run / table).is_dir() else []
        if parts:
            df = pl.scan_parquet(parts, hive_partitioning=False).select("PathName_DNA", "FileName_DNA").collect()
            done.update(zip(df["PathName_DNA"].to_list(), df["FileName_DNA"].to_list()))
    return done


def _prepare_run(run: Path, model: ModelInfo, opts: SegmentOptions) -> None:
    """Refuse to mix models or result settings in one run folder, unless ``overwrite`` (which empties it)."""
    path = run / "manifest.json"
    if opts.overwrite:
        for name in ("images", "objects", "errors", "labels", "analysis"):
            if (run / name).is_dir():
                shutil.rmtree(run / name)
        path.unlink(missing_ok=True)
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old.get("model", {}).get("sha256") not in (None, model.sha256):
        raise UserError(f"{run} was segmented with another model ({old['model'].get('path')}): use a new --out "
                        "folder, or --overwrite to start this one again")
    before = old.get("settings", {})
    changed = [k for k in RESULT_SETTINGS if k in before and before[k] != getattr(opts, k)]
    if changed:
        was = ", ".join(f"{k}={before[k]!r}" for k in changed)
        raise UserError(f"{run} was segmented with {was}: resume with the same settings, use a new --out folder, "
                        "or --overwrite")


def _retry_errors(run: Path) -> None:
    """Drop the error table so that its frames are attempted again (a frame that fails again is recorded again)."""
    if (run / "errors").is_dir():
        shutil.rmtree(run / "errors")


def segment(
    sources: Sequence[str | Path] | Discovery,
    out: str | Path,
    model: str | Path | None = None,
    options: SegmentOptions | None = None,
    pattern: str = "auto",
    channel: int | None = None,
    on_discovered: Callable[[Discovery], None] | None = None,
) -> SegmentResult:
    """Segment every frame of the discovered screen into the run folder ``out`` (see the module docstring).

    ``on_discovered`` is called with the discovery before any frame is read (the CLI prints its summary)."""
    opts = options or SegmentOptions()
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    seg = Segmenter(model, opts.backend, opts.threads, opts.min_area, opts.pixel_size, opts.min_contrast,
                    opts.min_edge_area, opts.grow_area)  # fail first
    batch_size = opts.batch_size or seg.backend.preferred_batch
    found = sources if isinstance(sources, Discovery) else discover(sources, pattern, channel)
    if on_discovered is not None:
        on_discovered(found)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    _prepare_run(run, seg.info, opts)
    if opts.retry_errors:
        _retry_errors(run)

    frames = found.frames.with_row_index("ImageNumber", offset=1).with_columns(pl.col("ImageNumber").cast(pl.Int64))
    if opts.shard is not None:  # shards share one run folder: part names are unique, ImageNumbers global
        k, n = opts.shard
        frames = frames.filter((pl.col("ImageNumber") - 1) % n == k)
    mine = frames.height
    done = _done_frames(run, ("images", "errors"))
    if done:
        keys = pl.DataFrame(list(done), schema=["PathName_DNA", "FileName_DNA"], orient="row")
        frames = frames.join(keys, on=["PathName_DNA", "FileName_DNA"], how="anti")
    records = frames.to_dicts()
    threads = opts.threads or os.cpu_count() or 1
    writer = _Writer(run, opts.part_frames)
    busy: dict[str, float] = defaultdict(float)
    busy_lock = threading.Lock()  # the stages run on several threads; += on a dict entry is not atomic

    def spent(stage: str, since: float) -> None:
        with busy_lock:
            busy[stage] += time.perf_counter() - since

    failed = 0
    t_start = time.time()

    def load(rec: dict):
        t = time.perf_counter()
        try:
            raw = read_frame(Path(rec["PathName_DNA"]) / rec["FileName_DNA"])
            if raw.ndim != 2:
                raise FrameReadError(f"{rec['FileName_DNA']}: not a 2-D frame")
            x = seg.prepare(raw)
            rec = {**rec, **frame_quality(raw)}
        except FrameReadError as exc:
            spent("decode", t)
            return rec, None, None, ("decode", str(exc))
        spent("decode", t)
        return rec, raw, x, None

    def postprocess(rec: dict, raw: np.ndarray, classes: np.ndarray):
        t = time.perf_counter()
        labels, summary, objects = seg.measure(classes, raw, opts.objects, opts.save_labels, opts.micronucleus_area)
        row = {k: rec[k] for k in ["ImageNumber", *FRAME_COLUMNS, *QUALITY_COLUMNS]}
        row.update(summary)
        if objects is not None:
            objects = objects.with_columns(pl.lit(rec["ImageNumber"], pl.Int64).alias("ImageNumber"),
                                           *[pl.lit(rec[k]).alias(k) for k in FRAME_COLUMNS[:6]])
        if opts.save_labels:
            folder = run / "labels" / f"plate={rec['Metadata_Plate']}"
            folder.mkdir(parents=True, exist_ok=True)
            dtype = np.uint16 if labels.max(initial=0) < 65536 else np.uint32
            tifffile.imwrite(folder / (Path(rec["FileName_DNA"]).stem + "_labels.tif"), labels.astype(dtype),
                             compression="zlib")
        spent("postprocess", t)
        return row, objects

    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="frame", desc="segment")
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    pending_post: list[tuple[dict, Future]] = []

    def collect(limit: int) -> None:
        """Write finished frames, oldest first; wait until at most ``limit`` are pending (back-pressure)."""
        nonlocal failed
        keep = []
        for i, (rec, fut) in enumerate(pending_post):
            if not fut.done() and len(pending_post) - i <= limit:
                keep.append((rec, fut))
                continue
            t = time.perf_counter()
            try:
                row, objects = fut.result()
            except Exception as exc:  # a kernel failing on one frame must not stop the screen
                failed += 1
                writer.add("errors", None, _error_row(rec, "postprocess", f"{type(exc).__name__}: {exc}"))
            else:
                writer.add("images", row["Metadata_Plate"], row)
                if objects is not None and objects.height:
                    writer.add("objects", row["Metadata_Plate"], objects)
            spent("write", t)
            if bar is not None:
                bar.update()
        pending_post[:] = keep

    def fail(items: list, exc: Exception) -> None:
        nonlocal failed
        for rec, _, _ in items:
            failed += 1
            writer.add("errors", None, _error_row(rec, "infer", f"{type(exc).__name__}: {exc}"))
            if bar is not None:
                bar.update()

    def finish(job: tuple) -> None:
        """Collect a submitted batch and hand its frames to the post-processing threads."""
        items, pending = job
        t = time.perf_counter()
        try:
            classes = seg.collect(pending)
        except Exception as exc:
            spent("infer", t)
            fail(items, exc)
            return
        spent("infer", t)
        for k, (rec, raw, _) in enumerate(items):
            pending_post.append((rec, pool.submit(postprocess, rec, raw, classes[k])))

    inflight = None  # (items, pending batch) submitted to the network, not yet collected
    with ThreadPoolExecutor(threads) as pool:
        ahead = [pool.submit(load, r) for r in batches[0]] if batches else []
        for bi in range(len(batches)):
            loaded = [f.result() for f in ahead]
            ahead = [pool.submit(load, r) for r in batches[bi + 1]] if bi + 1 < len(batches) else []
            good = []
            for rec, raw, x, err in loaded:
                if err is not None:
                    failed += 1
                    writer.add("errors", None, _error_row(rec, *err))
                    if bar is not None:
                        bar.update()
                else:
                    good.append((rec, raw, x))
            # Same-shape groups; each is padded to the network's multiple and cropped back.
            by_shape: dict[tuple[int, int], list] = defaultdict(list)
            for item in good:
                by_shape[item[1].shape].append(item)
            for shape, items in by_shape.items():
                if inflight is not None and inflight[1].size != items[0][2].shape:
                    finish(inflight)  # a backend keeps buffers for one frame size: drain before another
                    inflight = None
                t = time.perf_counter()
                try:
                    pending = seg.submit([x for _, _, x in items], shape)
                except Exception as exc:  # e.g. out of memory on one odd-sized batch: record, go on
                    spent("infer", t)
                    fail(items, exc)
                    continue
                spent("infer", t)
                # The previous batch is collected only now, so an asynchronous backend computes this one meanwhile.
                if inflight is not None:
                    finish(inflight)
                inflight = (items, pending)
            collect(limit=2 * batch_size * threads)
        if inflight is not None:
            finish(inflight)
        collect(limit=0)
    writer.flush()
    if bar is not None:
        bar.close()
    seconds = time.time() - t_start
    result = SegmentResult(run, len(records), mine - len(records), failed, seconds, dict(busy),
                           seg.backend.description)
    _write_manifest(run, seg.info, result, opts, found)
    return result


def _error_row(rec: dict, stage: str, error: str) -> dict:
    row = {k: rec.get(k) for k in FRAME_COLUMNS}
    row.update({"ImageNumber": rec.get("ImageNumber"), "Stage": stage, "Error": error.splitlines()[0][:500]})
    return row


def _write_manifest(run: Path, info: ModelInfo, result: SegmentResult, opts: SegmentOptions, found: Discovery) -> None:
    import onnxruntime

    path = run / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    sessions = old.get("sessions", [])
    sessions.append({
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "frames": result.frames, "skipped": result.skipped, "failed": result.failed,
        "seconds": round(result.seconds, 2), "busy_seconds": {k: round(v, 2) for k, v in result.busy.items()},
        "backend": result.backend,
    })
    manifest = {
        "nucleiscreen": nucleiscreen.__version__,
        "model": {"path": str(info.path), "sha256": info.sha256, "card": info.card},
        "settings": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
        "discovery": {"pattern": found.pattern, "frames": found.frames.height},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "polars": pl.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "sessions": sessions,
    }
    tmp = run / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path)
