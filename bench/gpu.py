"""The torch backend on a CUDA GPU: the network alone, the engine end to end, and agreement with CPU onnxruntime.

1. Inference: raw uint16 1104^2 frames (a few distinct simulated ones and their rotations) go through
   ``TorchBackend.submit_raw``/``collect_raw`` as the engine sends them: copied into pinned buffers, normalized,
   padded to 1120^2, run in FP16 channels-last with the ArgMax on the device, the uint8 class maps copied back. Two
   batches are in flight (batch k+1 is submitted before batch k is collected). Variants: eager, CUDA graphs
   (``graphs=True``) and ``torch.compile`` (``compile=True``), at batch sizes 1, 4, 8, 16 and 32 (``--quick``: eager
   and graphs at 1 and 16). Each configuration is warmed up (3 batches; the graph capture or compilation happens
   there), then timed for about 2 s and at least 10 batches: frames/s, and the achieved TFLOP/s = frames/s x the
   model's GFLOP per padded frame (``bench/flops.py``: convolutions only) / 1000. The batch latency (p50, p95) is timed
   apart, one batch at a time from submit to collect, over 10 batches.
2. End to end: ``--frames`` CX7-named 1104^2 uint16 TIFFs in /dev/shm (16 distinct files, the rest hard links to
   them) run through ``engine.pipeline.segment`` with the torch backend (eager) at batch 16, after a warm-up run on
   a few batches: frames/s, and the busy seconds of each stage (summed over the threads that run it).
3. Parity: the lab's 10 annotated validation frames (8-bit PNG) through the CUDA raw path against CPU onnxruntime:
   the fraction of equal class-map pixels (goal >= 0.999) and the difference in nuclei counts (goal <= 1).

Results go to OUT/gpu.json and OUT/gpu.md, rewritten after each part, so a run cut short keeps what it measured.
Without a CUDA device it prints one line and measures nothing.

    nucleiscreen bench gpu [--out bench-results] [--frames 4096] [--quick] [--model M]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nucleiscreen.bench.flops import model_gflops
from nucleiscreen.bench.host import CHANNELS, write_frames
from nucleiscreen.engine.model import ModelInfo, load_model_info
from nucleiscreen.simulate import frame_file_name, plate_name, synth_frame, well_names

BATCHES = (1, 4, 8, 16, 32)
QUICK_BATCHES = (1, 16)
VARIANTS = {"eager": {}, "cuda-graphs": {"graphs": True}, "compiled": {"compile": True}}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aitslab-bioimaging1"


def _cuda_missing() -> str | None:
    """Why there is no CUDA device to measure on, or None when there is one."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def _error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def sample_frames(size: tuple[int, int] = (1104, 1104), distinct: int = 4) -> list[np.ndarray]:
    """``distinct`` simulated raw uint16 frames and their quarter-turn rotations (square frames only)."""
    frames = [synth_frame(np.random.default_rng(i), size)[0] for i in range(distinct)]
    if size[0] == size[1]:
        frames += [np.ascontiguousarray(np.rot90(f, 1 + i % 3)) for i, f in enumerate(frames)]
    return frames


def _overlapped(tb, batches: list[list[np.ndarray]], start: int, seconds: float, min_batches: int) -> tuple[int, float]:
    """Batches run with two in flight, as the engine runs them, until ``seconds`` passed and at least
    ``min_batches`` were collected: (batches collected, seconds from the first submit to the last collect)."""
    t0 = time.perf_counter()
    token, k, done = tb.submit_raw(batches[start % len(batches)]), start + 1, 0
    while True:
        ahead = tb.submit_raw(batches[k % len(batches)])
        k += 1
        tb.collect_raw(token)
        done += 1
        token = ahead
        if done + 1 >= min_batches and time.perf_counter() - t0 >= seconds:
            break
    tb.collect_raw(token)
    return done + 1, time.perf_counter() - t0


def inference(info: ModelInfo, variant: str, batch: int, frames: list[np.ndarray], device: str = "cuda",
              seconds: float = 2.0, min_batches: int = 10, warmup: int = 3, latency_batches: int = 10,
              gflop: float | None = None) -> dict:
    """Throughput and latency of the torch backend's raw-frame path for one variant and batch size.

    Parameters
    ----------
    info : ModelInfo
        The model.
    variant : {"eager", "cuda-graphs", "compiled"}
        How the backend computes (see ``VARIANTS``).
    batch : int
        Frames per batch.
    frames : list of (H, W) uint16 arrays
        The frames the batches cycle through.
    device : str
        ``cuda``, or ``cpu`` to exercise the code (FP32, synchronous; CUDA graphs do not apply there).
    seconds, min_batches : float, int
        The overlapped timing runs for at least this long and this many batches.
    warmup : int
        Batches run (two in flight) before timing; CUDA graph capture and compilation happen here.
    latency_batches : int
        Batches timed one at a time, submit to collect, for the latency percentiles.
    gflop : float, optional
        GFLOP per padded frame, for the achieved TFLOP/s.

    Returns
    -------
    dict
        variant, batch, frames_per_s, p50_ms, p95_ms, tflops, warmup_s (backend made and warm-up batches run),
        batches, seconds, peak_mem_gib, description;
        ``error`` (and no measurements) when the configuration failed, for example out of GPU memory.
    """
    import torch

    from nucleiscreen.engine.backends.torch import TorchBackend

    row: dict = {"variant": variant, "batch": batch}
    cuda = torch.device(device).type == "cuda"
    batches = [[frames[(k * batch + j) % len(frames)] for j in range(batch)] for k in range(len(frames))]
    tb = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if variant == "compiled":
            torch._dynamo.reset()  # each configuration compiles afresh, within dynamo's recompile limit
        t0 = time.perf_counter()
        tb = TorchBackend(info, device=device, channels_last=True, **VARIANTS[variant])
        row["description"] = tb.description
        _overlapped(tb, batches, 0, 0.0, warmup)
        row["warmup_s"] = round(time.perf_counter() - t0, 3)
        n, elapsed = _overlapped(tb, batches, warmup, seconds, min_batches)
        lat = []
        for k in range(latency_batches):
            t = time.perf_counter()
            tb.collect_raw(tb.submit_raw(batches[k % len(batches)]))
            lat.append(time.perf_counter() - t)
        fps = n * batch / elapsed
        row.update(frames_per_s=round(fps, 2), batches=n, seconds=round(elapsed, 3),
                   p50_ms=round(1000 * float(np.percentile(lat, 50)), 3),
                   p95_ms=round(1000 * float(np.percentile(lat, 95)), 3),
                   tflops=round(fps * gflop / 1000, 3) if gflop else None)
        if cuda:
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except Exception as exc:  # out of memory (torch.OutOfMemoryError), a failed compilation or capture: go on
        row["error"] = _error(exc)
    finally:
        del tb
        gc.collect()
        if cuda:
            with contextlib.suppress(Exception):  # the error is in the row already
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    return row


def inference_table(info: ModelInfo, quick: bool = False, device: str = "cuda",
                    variants: tuple[str, ...] = ("eager", "cuda-graphs", "compiled"),
                    size: tuple[int, int] = (1104, 1104), on_row=None, **timing) -> list[dict]:
    """``inference`` over the variants and batch sizes (quick: eager and CUDA graphs at batch 1 and 16); a
    compilation that fails for reasons other than memory is not retried at the larger batches."""
    gflop = padded_gflop(info, size)
    frames = sample_frames(size)
    rows: list[dict] = []
    for variant in variants:
        if quick and variant == "compiled":
            continue
        failed = None
        for batch in QUICK_BATCHES if quick else BATCHES:
            if failed:
                row = {"variant": variant, "batch": batch, "error": f"skipped: {failed}"}
            else:
                row = inference(info, variant, batch, frames, device=device, gflop=gflop, **timing)
                if variant == "compiled" and "error" in row and "OutOfMemory" not in row["error"]:
                    failed = f"compilation failed at batch {batch}"
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def padded_gflop(info: ModelInfo, size: tuple[int, int]) -> float | None:
    """GFLOP per frame of ``size`` padded to the model's multiple (None for a checkpoint or an uncountable graph)."""
    h, w = (-(-s // info.multiple) * info.multiple for s in size)
    try:
        return model_gflops(info.path, h, w)
    except Exception:  # a .pt checkpoint, a graph whose shapes onnx cannot infer
        return None


def _link_screen(files: list[list[Path]], folder: Path, count: int) -> None:
    """``count`` fields named as ``write_frames`` names them, each channel a hard link to the files of a written
    field (``files``: each field's files by channel) in turn."""
    wells = well_names()
    for i in range(count):
        plate = plate_name(i // (384 * 16))
        (folder / plate).mkdir(parents=True, exist_ok=True)
        for channel, file in enumerate(files[i % len(files)]):
            os.link(file, folder / plate / frame_file_name(plate, wells[(i // 16) % 384], i % 16, channel, "tif"))


def end_to_end(info: ModelInfo, frames: int, device: str = "cuda", batch_size: int = 16,
               size: int = 1104, distinct: int = 16, work: Path | None = None, channels: int = 1) -> dict:
    """The engine over ``frames`` simulated fields of TIFFs with the torch backend (eager), after a warm-up run;
    ``channels`` 3: each field with the simulator's two marker frames, all measured (``--channels``), the markers
    illumination-corrected.

    Parameters
    ----------
    info : ModelInfo
        The model.
    frames : int
        Frames of the timed run (``distinct`` written files, the rest hard links to them).
    device : str
        ``cuda``, or ``cpu`` to exercise the code.
    batch_size : int
        Frames per network batch.
    size : int
        Frame side in px.
    distinct : int
        Files written; the warm-up run segments 4 batches of links to them.
    work : Path, optional
        Where the frames and run folders go (removed afterwards); default /dev/shm when it has room, else the
        temporary folder.

    Returns
    -------
    dict
        frames, failed, seconds, frames_per_s, busy (stage -> seconds), backend, threads (the engine's pool:
        os.cpu_count()), cores (this process may use), warmup_frames, warmup_s, where.
    """
    from nucleiscreen.engine.backends.torch import TorchBackend
    from nucleiscreen.engine.channels import Channels
    from nucleiscreen.engine.pipeline import SegmentOptions
    from nucleiscreen.engine.run import segment
    from nucleiscreen.engine.segmenter import Segmenter

    if work is None:
        need = 3 * channels * distinct * size * size * 2
        shm = Path("/dev/shm")
        work = shm if shm.is_dir() and shutil.disk_usage(shm).free > need else Path(tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="nucleiscreen-bench-gpu-", dir=work))
    try:
        write_frames(tmp / "distinct", distinct, size, distinct=distinct, channels=channels)
        written = sorted((tmp / "distinct").rglob("*.tif"))
        files = [[f for f in written if f.stem[:-1] == d0.stem[:-1]] for d0 in written if d0.stem.endswith("d0")]
        warm_frames = min(frames, 4 * batch_size)
        _link_screen(files, tmp / "warm", warm_frames)
        _link_screen(files, tmp / "screen", frames)
        seg = Segmenter(info, backend=TorchBackend(info, device=device))
        opts = SegmentOptions(backend="torch", batch_size=batch_size, progress=False,
                              channels=Channels.parse(CHANNELS[channels] or None))
        t0 = time.perf_counter()
        segment([tmp / "warm"], tmp / "run-warm", options=opts, segmenter=seg)
        warm_s = time.perf_counter() - t0
        res = segment([tmp / "screen"], tmp / "run", options=opts, segmenter=seg)
        return {"channels": channels, "frames": res.frames, "failed": res.failed, "seconds": round(res.seconds, 3),
                "frames_per_s": round(res.frames / res.seconds, 2), "batch_size": batch_size,
                "busy": {k: round(v, 3) for k, v in sorted(res.busy.items())}, "backend": res.backend,
                "threads": os.cpu_count(), "cores": len(os.sched_getaffinity(0)), "warmup_frames": warm_frames,
                "warmup_s": round(warm_s, 3),
                "where": str(work)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parity(info: ModelInfo, data: Path = DEFAULT_DATA, device: str = "cuda", limit: int | None = None) -> dict:
    """The CUDA raw path (eager) against CPU onnxruntime on the lab's validation frames (``data/val/images``).

    Returns
    -------
    dict
        frames: per frame (name, equal fraction, nuclei of each, difference); min_equal, max_count_diff and whether
        the goals (>= 0.999, <= 1) are met; or ``skipped`` with the reason when the frames are missing.
    """
    from nucleiscreen.engine.backends.torch import TorchBackend
    from nucleiscreen.engine.readers import read_frame
    from nucleiscreen.engine.segmenter import Segmenter
    from nucleiscreen.kernels.instances import instances_from_classes

    paths = sorted((Path(data) / "val" / "images").glob("*.png"))[:limit]
    if not paths:
        return {"skipped": f"no validation frames at {Path(data) / 'val' / 'images'}"}
    if info.is_checkpoint:
        return {"skipped": "onnxruntime cannot run a checkpoint"}
    seg = Segmenter(info, backend="onnxruntime")
    tb = TorchBackend(info, device=device)
    post = {k: info.postprocessing[k] for k in ("max_grow", "min_area") if k in info.postprocessing}
    rows = []
    for p in paths:
        raw = read_frame(p)
        ref = seg.classes([seg.prepare(raw)], raw.shape)[0]
        got = tb.collect_raw(tb.submit_raw(np.stack([raw])))[0]
        n_ref = int(instances_from_classes(ref, **post).max())
        n_got = int(instances_from_classes(got, **post).max())
        rows.append({"frame": p.name, "equal": round(float((ref == got).mean()), 6), "nuclei_onnxruntime": n_ref,
                     "nuclei_torch": n_got, "diff": n_got - n_ref})
    min_eq = min(r["equal"] for r in rows)
    max_diff = max(abs(r["diff"]) for r in rows)
    return {"device": tb.description, "frames": rows, "min_equal": min_eq, "max_count_diff": max_diff,
            "equal_goal_met": min_eq >= 0.999, "count_goal_met": max_diff <= 1}


def markdown(results: dict) -> str:
    """The results as Markdown: the inference table, the end-to-end line, the parity summary."""
    g = results.get("gflop_per_frame")
    lines = [f"## torch backend on {results.get('device', '?')} (torch {results.get('torch', '?')})", "",
             f"Raw uint16 {results['frame'][0]}x{results['frame'][1]} frames padded to "
             f"{results['padded'][0]}x{results['padded'][1]} on the device"
             + (f", {g:.2f} GFLOP per frame" if g else "") + "; two batches in flight.", "",
             "| variant | batch | frames/s | p50 ms | p95 ms | TFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in results.get("inference", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['error']} | | | |")
        else:
            tf = f"{r['tflops']:.2f}" if r.get("tflops") is not None else "n/a"
            lines.append(f"| {r['variant']} | {r['batch']} | {r['frames_per_s']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p95_ms']:.2f} | {tf} |")
    for key, what in (("end_to_end", "frames"), ("end_to_end_3_channels", "fields of 3 channels")):
        e = results.get(key)
        if not e:
            continue
        lines.append("")
        if "error" in e:
            lines.append(f"End to end, {what}: {e['error']}")
        else:
            busy = ", ".join(f"{k} {v:.2f} s" for k, v in e["busy"].items())
            lines.append(f"End to end (`segment`, {e['backend']}, batch {e['batch_size']}, {e['threads']} threads on "
                         f"{e['cores']} cores): "
                         f"{e['frames']} {what} in {e['seconds']:.2f} s = {e['frames_per_s']:.1f} per s "
                         f"({e['failed']} failed; warm-up run of {e['warmup_frames']} first, "
                         f"{e['warmup_s']:.1f} s); stage busy: {busy}")
    p = results.get("parity")
    if p:
        lines.append("")
        if "skipped" in p or "error" in p:
            lines.append(f"Parity: {p.get('skipped') or p.get('error')}")
        else:
            ok = "met" if p["equal_goal_met"] and p["count_goal_met"] else "NOT met"
            lines += [f"Parity with CPU onnxruntime ({p['device']}), {len(p['frames'])} lab validation frames: min "
                      f"equal pixels {p['min_equal']:.6f} (goal >= 0.999), max |nuclei count diff| "
                      f"{p['max_count_diff']} (goal <= 1): goals {ok}", "",
                      "| frame | equal | nuclei onnxruntime | nuclei torch |", "|---|---:|---:|---:|"]
            lines += [f"| {r['frame']} | {r['equal']:.6f} | {r['nuclei_onnxruntime']} | {r['nuclei_torch']} |"
                      for r in p["frames"]]
    return "\n".join(lines) + "\n"


def _save(out: Path, results: dict) -> None:
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(results))


def main(out: str | Path = "bench-results", frames: int = 4096, model: str | Path | None = None,
         quick: bool = False, data: str | Path | None = None) -> dict | None:
    """Measure the torch backend on CUDA (see the module docstring) into ``out``/gpu.json and gpu.md; without a
    CUDA device print why and return None."""
    missing = _cuda_missing()
    if missing:
        print(f"bench gpu: no CUDA device ({missing}): nothing measured")
        return None
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = load_model_info(model)
    size = (1104, 1104)
    props = torch.cuda.get_device_properties(0)
    results: dict = {"device": torch.cuda.get_device_name(), "gpu_memory_gib": round(props.total_memory / 2**30, 2),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                     "model": str(info.path), "sha256": info.sha256, "quick": quick, "frame": list(size),
                     "padded": [-(-s // info.multiple) * info.multiple for s in size],
                     "gflop_per_frame": padded_gflop(info, size), "inference": []}
    print(f"bench gpu: {results['device']} ({results['gpu_memory_gib']} GiB), torch {results['torch']}, "
          f"{info.path.name}: {results['gflop_per_frame'] or float('nan'):.2f} GFLOP per padded frame")

    def row_done(row: dict) -> None:
        results["inference"].append(row)
        _save(out, results)
        print("  " + json.dumps(row), flush=True)

    # the variants the engine can use first; compilation (slow, may fail) last, so a cut-short run keeps the rest
    inference_table(info, quick, variants=("eager", "cuda-graphs"), size=size, on_row=row_done)
    try:
        results["parity"] = parity(info, Path(data) if data else DEFAULT_DATA)
    except Exception as exc:
        results["parity"] = {"error": _error(exc)}
    _save(out, results)
    for key, channels in (("end_to_end", 1), ("end_to_end_3_channels", 3)):
        try:
            results[key] = end_to_end(info, min(frames, 512) if quick else frames, size=size[0], channels=channels)
        except Exception as exc:
            results[key] = {"error": _error(exc)}
        _save(out, results)
    if not quick:
        inference_table(info, quick, variants=("compiled",), size=size, on_row=row_done)
    _save(out, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-results")
    p.add_argument("--frames", type=int, default=4096)
    p.add_argument("--model")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", help=f"the lab's annotated frames (default: {DEFAULT_DATA})")
    a = p.parse_args()
    main(out=a.out, frames=a.frames, model=a.model, quick=a.quick, data=a.data)
