"""The run folder that ``segment`` fills: Parquet parts of the image, object and error tables, label images and
``manifest.json``.

    RUN/images/plate=<plate>/part-*.parquet    one row per frame
    RUN/objects/plate=<plate>/part-*.parquet   one row per nucleus (--objects)
    RUN/labels/plate=<plate>/<stem>_labels.tif label images (--save-labels)
    RUN/errors/part-*.parquet                  one row per frame that failed: its file columns, Stage, Error
    RUN/manifest.json                          model, settings, versions, every run of the command

Parts are written under a temporary name and renamed, so an interrupted run never leaves a half-written part
behind; resuming skips the frames already in the image or error tables.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import tifffile

import nucleiscreen
from nucleiscreen.engine.channels import Channels
from nucleiscreen.engine.discover import METADATA_COLUMNS, Discovery
from nucleiscreen.engine.model import ModelInfo
from nucleiscreen.errors import StorageError, UserError
from nucleiscreen.kernels.intensity import channel_columns
from nucleiscreen.kernels.measure import summary_schema
from nucleiscreen.kernels.postprocess import OVERRIDABLE
from nucleiscreen.kernels.quality import quality_columns

# Settings that change the numbers in the tables: a run folder is resumed only with the same ones.
RESULT_SETTINGS = ("micronucleus_area", "objects", "pixel_size", "channels", "illum", *OVERRIDABLE)
OBJECT_KEYS = ("ImageNumber", *METADATA_COLUMNS)  # what each object row carries of its frame


class PartWriter:
    """Buffers the rows of each table and plate; writes them as part files atomically (temp name, then rename).

    Image and error rows are dicts; a frame's objects are a table without its frame's columns, which are added when
    the part is written (``OBJECT_KEYS``), so no per-frame table is ever widened."""

    def __init__(self, run: Path, part_frames: int, frame_schema: dict[str, pl.DataType], channels: Channels,
                 checkpoint_seconds: float = 60.0, token: str | None = None):
        self.run, self.part_frames, self.checkpoint_seconds = run, part_frames, checkpoint_seconds
        self.last_flush = time.monotonic()
        self.object_keys = {"ImageNumber": pl.Int64, **{k: frame_schema[k] for k in OBJECT_KEYS[1:]}}
        # Fixed types: a part whose frames all lack a value (no nucleus off the border) must not type it Null.
        frame = {k: frame_schema[k] for k in (*METADATA_COLUMNS, *channels.columns())}
        measured = channels.names if channels.named else (channels.nuclei,)
        quality = {c: pl.Float64 for name in measured for c in quality_columns(name)}
        summary = summary_schema(channels.nuclei)
        if channels.named:  # every channel's frame mean and nuclei mean (kernels/intensity.py)
            summary |= {k: v for name in measured for k, v in channel_columns(name, objects=False).items()}
        self.schemas = {"images": {"ImageNumber": pl.Int64, **frame, **quality, **summary},
                        "errors": {**frame, "ImageNumber": pl.Int64, "Stage": pl.String, "Error": pl.String}}
        self.rows: dict[tuple[str, str], list] = defaultdict(list)
        self.token = token or new_token()  # in every part name: which writer wrote it
        self.count = 0

    def add_frame(self, row: dict, objects: pl.DataFrame | None) -> None:
        """The image row of a frame and, with ``--objects``, its object table."""
        plate = row["Metadata_Plate"] or ""
        if objects is not None and objects.height:
            self.rows[("objects", plate)].append((tuple(row[k] for k in OBJECT_KEYS), objects))
        images = self.rows[("images", plate)]
        images.append(row)
        if len(images) >= self.part_frames:  # memory stays flat however many frames
            self.flush(plate)
        self._checkpoint()

    def add_error(self, rec: dict, stage: str, error: str) -> None:
        """The error-table row of a frame (its row of the frame table) that failed at ``stage``."""
        row = {k: rec.get(k) for k in self.schemas["errors"]}
        row.update({"Stage": stage, "Error": error.splitlines()[0][:500] if error else ""})
        self.rows[("errors", "")].append(row)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Everything buffered goes out after ``checkpoint_seconds`` of work: a killed run loses at most that."""
        if time.monotonic() - self.last_flush >= self.checkpoint_seconds:
            self.flush()

    def flush(self, plate: str | None = None) -> None:
        """Write the buffered rows of ``plate`` (None: of every plate, and the error rows)."""
        if plate is None:
            self.last_flush = time.monotonic()
        for p in [plate] if plate is not None else sorted({k[1] for k in self.rows if k[0] == "images"}):
            # One commit: the objects part first, then the image part of the same name. Readers take an objects
            # part only beside its image part, so a crash between the two leaves no object rows of unwritten frames.
            self.count += 1
            objects = self.rows.pop(("objects", p), [])
            if objects:
                self._write("objects", p, self._objects(objects))
            self._write("images", p, pl.from_dicts(self.rows.pop(("images", p)), schema=self.schemas["images"]))
        if plate is None and self.rows.get(("errors", "")):
            self.count += 1
            self._write("errors", "", pl.from_dicts(self.rows.pop(("errors", "")), schema=self.schemas["errors"]))

    def _objects(self, items: list[tuple[tuple, pl.DataFrame]]) -> pl.DataFrame:
        """One table of the buffered frames' objects, each row followed by its frame's ``OBJECT_KEYS``."""
        tables = pl.concat([t for _, t in items], how="vertical_relaxed")
        keys = pl.DataFrame([k for k, _ in items], schema=self.object_keys, orient="row")
        frame_of_row = np.repeat(np.arange(len(items)), [t.height for _, t in items])
        return pl.concat([tables, keys[frame_of_row]], how="horizontal")

    def _write(self, table: str, plate: str, df: pl.DataFrame) -> None:
        folder = self.run / table / f"plate={plate}" if table != "errors" else self.run / table
        name = f"part-{self.token}-{self.count:05d}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            df.write_parquet(tmp)
            os.replace(tmp, folder / name)
        except OSError as exc:  # a full disk: no half part stays; the rows not written are segmented on resume
            tmp.unlink(missing_ok=True)
            raise StorageError(folder / name, exc) from exc


def new_token() -> str:
    return uuid.uuid4().hex[:8]


def object_parts(run: Path) -> list[Path]:
    """The run's object parts that were committed: those beside an image part of the same name and plate."""
    parts = sorted((run / "objects").glob("plate=*/part-*.parquet"))
    return [p for p in parts if (run / "images" / p.parent.name / p.name).exists()]


def remove_orphan_objects(run: Path) -> int:
    """Delete the object parts of writers that died between an object part and its image part (their frames are
    segmented again on resume), except those of runs still holding a lock on the folder; how many were removed."""
    live = {lock.get("token") for lock in _locks(run)}
    orphans = [p for p in (run / "objects").glob("plate=*/part-*.parquet")
               if not (run / "images" / p.parent.name / p.name).exists() and p.name.split("-")[1] not in live]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


class RunLock:
    """One ``segment`` (or one shard of it) at a time on a run folder: ``RUN/.locks/<shard>.json`` names the holder
    (host, pid, start, writer token). A second run of the same shard is refused with one line naming the holder; a
    lock whose process is gone is taken over with a notice: on the same host when its pid is gone, from another host
    when its heartbeat (the holder touches the file every ``HEARTBEAT`` seconds) is older than ``STALE`` seconds.
    Shards K/N of one folder run side by side, from several hosts too (the lock is a file made with O_EXCL on the
    shared file system)."""

    HEARTBEAT = 30.0
    STALE = 600.0  # generous: clocks of the hosts sharing a file system differ, and a stalled NFS server pauses all

    def __init__(self, run: Path, shard: tuple[int, int] | None, token: str):
        self.path = run / ".locks" / (f"shard-{shard[0]}-of-{shard[1]}.json" if shard else "all.json")
        self.token = token
        self._stop = threading.Event()

    def __enter__(self) -> RunLock:
        make_folder(self.path.parent)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.path)
                if holder is not None and not _gone(holder, _age(self.path), self.STALE):
                    raise UserError(f"{self.path.parent.parent} is being segmented ({self.path.stem}) by pid "
                                    f"{holder.get('pid')} on {holder.get('host')} since {holder.get('started')}: "
                                    f"wait for it, or remove {self.path} if that process is gone") from None
                print(f"note: taking over the lock of a run that is gone ({holder or 'unreadable lock'})",
                      file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            threading.Thread(target=self._beat, name="run-lock heartbeat", daemon=True).start()
            return self
        raise UserError(f"could not take the lock {self.path}: another run took it meanwhile")

    def _mine(self) -> bool:
        """Whether the lock file is still this run's (another run may have taken over a lock it judged stale)."""
        return (_read_lock(self.path) or {}).get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            try:
                if self._mine():
                    os.utime(self.path)
            except OSError:  # the folder went away or the file server hiccuped: try again at the next beat
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._mine():
            self.path.unlink(missing_ok=True)


def _locks(run: Path) -> list[dict]:
    return [lock for p in (run / ".locks").glob("*.json") if (lock := _read_lock(p)) is not None]


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _age(path: Path) -> float:
    """Seconds since the lock file was last touched (0 when it cannot be told)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _gone(holder: dict, age: float, stale: float) -> bool:
    """Whether the lock's process is known to be gone: on this host, no such pid; on another host, no heartbeat for
    ``stale`` seconds (``age``: since the last one)."""
    if holder.get("host") != socket.gethostname():
        return age > stale  # another host's process cannot be asked: its heartbeat tells
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def write_labels(path: Path, labels: np.ndarray) -> None:
    """A label image as napari and Fiji open it: uint16 TIFF (uint32 past 65,535 objects), zlib-compressed."""
    dtype = np.uint16 if labels.max(initial=0) < 65536 else np.uint32
    tifffile.imwrite(path, labels.astype(dtype), compression="zlib")


def done_frames(run: Path, key: list[str], plates: Sequence[str] | None = None) -> pl.DataFrame:
    """The ``key`` columns (the nuclei channel's folder and file name) of the frames already in the run's image or
    error tables (one row each); ``plates``: only those plates' image parts are read (a distributed worker's unit)."""
    images = run / "images"
    folders = [images / f"plate={p}" for p in plates] if plates is not None else [images]
    tables = [pl.scan_parquet(parts, hive_partitioning=False).select(key)  # one scan per table: their columns differ
              for group in (folders, [run / "errors"])
              if (parts := [p for f in group if f.is_dir() for p in sorted(f.rglob("part-*.parquet"))])]
    if not tables:
        return pl.DataFrame(schema=dict.fromkeys(key, pl.String))
    return pl.concat(tables).unique().collect()


def prepare_run(run: Path, model: ModelInfo, settings: dict, overwrite: bool, retry_errors: bool) -> None:
    """Make the folder; refuse to mix models or result settings in it unless ``overwrite`` (which empties it);
    ``retry_errors`` drops the error table so that its frames are attempted again."""
    run.mkdir(parents=True, exist_ok=True)
    path = run / "manifest.json"
    if overwrite:
        for name in ("images", "objects", "errors", "labels", "analysis"):
            if (run / name).is_dir():
                shutil.rmtree(run / name)
        path.unlink(missing_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("model", {}).get("sha256") not in (None, model.sha256):
            raise UserError(f"{run} was segmented with another model ({old['model'].get('path')}): use a new --out "
                            "folder, or --overwrite to start this one again")
        before = old.get("settings", {})
        changed = [k for k in RESULT_SETTINGS if k in before and before[k] != settings[k]]
        if changed:
            was = ", ".join(f"{k}={before[k]!r}" for k in changed)
            raise UserError(f"{run} was segmented with {was}: resume with the same settings, use a new --out "
                            "folder, or --overwrite")
    if retry_errors and (run / "errors").is_dir():
        shutil.rmtree(run / "errors")


def run_model(run: Path) -> Path | None:
    """The model file a run folder was begun with, when it is here (a shipped model, or the recorded path with the
    same sha256): without ``--model``, a resume or another shard goes on with it rather than with this host's default
    (the INT8 variant on a CPU, the FP32 model on a GPU). None for a new folder or a model not found here."""
    import hashlib

    from nucleiscreen.engine.model import shipped_models

    try:
        recorded = json.loads((run / "manifest.json").read_text()).get("model", {})
    except (OSError, ValueError, AttributeError):
        return None
    sha = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not sha:
        return None
    for path in [*shipped_models().values(), Path(recorded.get("path") or "")]:
        try:
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha:
                return path
        except OSError:
            continue
    return None


def make_folder(path: Path) -> None:
    """``mkdir -p``, or one line saying why not (a file in the way, no permission, a read-only file system)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot make the folder {path}: a file is in the way; give --out a folder") from None
    except OSError as exc:
        raise UserError(f"cannot make the folder {path}: {exc.strerror or exc}") from None


def write_manifest(run: Path, info: ModelInfo, settings: dict, found: Discovery, session: dict,
                   shapes: dict[str, tuple[int, int]] | None = None) -> None:
    """Record the model, the settings, the discovery (frames per plate: what ``analyze`` checks the tables against;
    each plate's frame size, ``shapes``) and versions, and append this run of the command to ``sessions``."""
    import onnxruntime

    path = run / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    sessions = [*old.get("sessions", []),
                {"finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **session}]
    manifest = {
        "nucleiscreen": nucleiscreen.__version__,
        "model": {"path": str(info.path), "sha256": info.sha256, "card": info.card},
        "settings": settings,
        "discovery": {"pattern": found.pattern, "frames": found.frames.height, "channels": found.names.as_dict(),
                      "plates": dict(found.frames.group_by("Metadata_Plate").len().sort("Metadata_Plate").iter_rows()),
                      "frame_size": {p: f"{w}x{h}" for p, (h, w) in sorted((shapes or {}).items())}},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "polars": pl.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "sessions": sessions,
    }
    write_json(path, manifest)


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (temporary name, then rename); ``StorageError`` when it cannot be."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{new_token()}.tmp")  # concurrent shards write their own
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(path, exc) from exc
