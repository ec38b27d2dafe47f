"""The ``nucleiscreen`` command: one entry point, one subcommand per step of a screen.

User mistakes (a missing folder, an unreadable layout, no frames matched) raise ``UserError`` and are printed as one
line, ``error: ...``, with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import sys
from pathlib import Path

from nucleiscreen import __version__
from nucleiscreen.errors import UserError


# ------------------------------------------------------------------------------------------------- subcommands
def cmd_simulate(a: argparse.Namespace) -> None:
    from nucleiscreen.simulate import simulate_screen

    sim = simulate_screen(a.out, plates=a.plates, fields=a.fields, size=a.size, fmt=a.format, seed=a.seed,
                          wells_per_gene=a.wells_per_gene, masks=not a.no_masks, channels=a.channels,
                          workers=a.threads, progress=not a.quiet)
    print(f"wrote {sim.frames} frames to {sim.images}")
    if sim.masks:
        print(f"ground-truth masks: {sim.masks}")
    print(f"layout: {sim.layout}\nplanted truth: {sim.truth}")


def cmd_train(a: argparse.Namespace) -> None:
    from nucleiscreen.trainer import require_torch

    require_torch()
    if a.finetune:
        return _finetune(a)
    if a.model is not None:
        raise UserError("--model goes with --finetune")
    if (a.config is None) == (a.sweep is None):
        raise UserError("give either --config FILE (one training), --sweep FILE (several, then model selection) or "
                        "--finetune DIR (a shipped model on your annotations)")
    if a.sweep:
        given = [f"--{k}" for k in ("out", "steps", "device") if getattr(a, k) is not None] + \
            (["--restart"] if a.restart else [])
        if given:
            raise UserError(f"{', '.join(given)} apply to one training (--config); set them in the sweep file")
        from nucleiscreen.trainer.sweep import run_sweep

        out = run_sweep(a.sweep, progress=not a.quiet, train_runs=not a.score_only)
        print(f"comparison table in {out / 'sweep.md'}, winner checkpoint {out / 'winner.pt'}")
        return
    if a.score_only:
        raise UserError("--score-only goes with --sweep")
    from nucleiscreen.trainer.config import TrainConfig, read_json
    from nucleiscreen.trainer.train import train

    raw = read_json(a.config, "training config")
    for key in ("out", "steps", "device"):
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    out = train(TrainConfig.from_dict(raw), resume=not a.restart, progress=not a.quiet)
    print(f"checkpoints and log in {out} (best.pt: the best validation score, last.pt: the last step)")


def _finetune(a: argparse.Namespace) -> None:
    from nucleiscreen.trainer.finetune import finetune

    if a.config or a.sweep or a.score_only or a.restart or a.device:
        raise UserError("--finetune takes --model, --out, --steps only")
    if not a.out:
        raise UserError("--finetune needs --out MODEL.onnx, the fine-tuned model to write")
    steps = {} if a.steps is None else {"steps": a.steps}
    r = finetune(a.finetune, a.out, model=a.model, progress=not a.quiet, **steps)
    names = ", ".join(r.held_out)
    print(f"fine-tuned on {len(r.train)} frame(s) in {r.seconds / 60:.1f} min"
          + (f" (resized by {r.scale:.3f} to the model's nucleus size)" if r.scale != 1 else ""))
    for label, m in (("starting model", r.before), ("fine-tuned", r.after)):
        print(f"held-out ({names}), {label}: F1@0.5 {m['f1']['0.50']:.3f}  @0.7 {m['f1']['0.70']:.3f}  "
              f"@0.9 {m['f1']['0.90']:.3f}")
    print(f"model: {r.model} (use it with --model)")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from nucleiscreen.trainer.evaluate import evaluate_folders, format_report

    report = evaluate_folders(a.pred, a.truth)
    print(format_report(report))
    if a.images:
        from nucleiscreen.trainer.evaluate import evaluate_baseline

        report["baseline"] = evaluate_baseline(a.images, a.truth)
        print("\nclassic baseline (Otsu + distance-transform watershed) on the same images:")
        print(format_report(report["baseline"]))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {a.json}")


def cmd_quantize(a: argparse.Namespace) -> None:
    from nucleiscreen.engine.discover import discover_images

    try:
        import onnx  # noqa: F401 (onnxruntime's quantization tools read and write the graph with it)
    except ImportError:
        raise UserError("quantize needs the onnx package: pip install onnx (or the [torch] extra)") from None
    from nucleiscreen.trainer.quantize import quantize_model

    path = quantize_model(a.model, a.out, discover_images([a.calibration]))
    print(f"wrote {path} (INT8, for --backend onnxruntime on the CPU)")


def cmd_export(a: argparse.Namespace) -> None:
    from nucleiscreen.trainer import require_torch

    require_torch()
    from nucleiscreen.trainer.export import export_onnx

    size = None
    if a.tensorrt:  # checked before the export, so a typo costs nothing
        try:
            size = tuple(int(v) for v in a.tensorrt.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UserError(f"--tensorrt takes the frame size as HxW, e.g. 1104x1104, not {a.tensorrt!r}")
    path = export_onnx(a.checkpoint, a.out, fp16=a.fp16, probabilities=a.probabilities, tta=a.tta)
    print(f"wrote {path}")
    if size:
        from nucleiscreen.engine.backends.tensorrt import TensorRTBackend
        from nucleiscreen.engine.model import load_model_info

        info = load_model_info(path)
        h, w = (-(-v // info.multiple) * info.multiple for v in size)
        plan = TensorRTBackend(info).ensure_plan(h, w)
        print(f"TensorRT plan for {h}x{w} frames, batch 1-32: {plan}")


def _overrides(a: argparse.Namespace) -> dict:
    """The post-processing settings given on the command line (``kernels/postprocess.py``; None: the card's)."""
    from nucleiscreen.kernels.postprocess import OVERRIDABLE

    return {k: getattr(a, k) for k in OVERRIDABLE}


def cmd_predict(a: argparse.Namespace) -> int:
    from nucleiscreen.engine.predict import predict

    def report(path: Path, reason: str) -> None:
        print(f"error: {reason if path.name in reason else f'{path}: {reason}'}", file=sys.stderr)

    from nucleiscreen.engine.channels import Channels

    result = predict(a.images, a.out, model=a.model, backend=a.backend, threads=a.threads, progress=not a.quiet,
                     pixel_size=a.pixel_size, overrides=_overrides(a), on_scale=_print_image_scale, on_error=report,
                     channels=Channels.parse(a.channels, a.nuclei_channel), pattern=a.pattern)
    print(f"wrote {len(result.written)} label image(s) to {a.out}"
          + (f"; {len(result.failed)} image(s) failed (above)" if result.failed else ""))
    return 1 if result.failed else 0


def _segment(a: argparse.Namespace):
    from nucleiscreen.engine.channels import Channels
    from nucleiscreen.engine.pipeline import SegmentOptions, parse_shard
    from nucleiscreen.engine.run import segment

    opts = SegmentOptions(backend=a.backend, batch_size=a.batch_size, threads=a.threads, objects=a.objects,
                          save_labels=a.save_labels, micronucleus_area=a.micronucleus_area, progress=not a.quiet,
                          overwrite=a.overwrite, retry_errors=a.retry_errors, pixel_size=a.pixel_size,
                          post=_overrides(a), channels=Channels.parse(a.channels, a.nuclei_channel, a.channel),
                          illum=a.illum,
                          shard=parse_shard(a.shard) if a.shard else None, checkpoint_seconds=a.checkpoint_seconds)
    executor = None
    if a.executor == "ray":
        from nucleiscreen.engine.ray_executor import RayExecutor

        executor = RayExecutor(address=a.address, workers=a.workers, gpus_per_worker=a.gpus_per_worker)
    elif a.address or a.workers or a.gpus_per_worker:
        raise UserError("--address, --workers and --gpus-per-worker go with --executor ray")
    result = segment(a.sources, a.out, model=a.model, options=opts, pattern=a.pattern, executor=executor,
                     on_discovered=lambda found: print(found.summary()), on_scale=_print_scale,
                     on_illum=_print_illum)
    busy = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(result.busy.items()))
    print(f"segmented {result.frames} frame(s) in {result.seconds:.1f}s with {result.backend}"
          f" ({result.skipped} already done, {result.failed} failed); busy: {busy}")
    if result.failed:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(result.failed_by.items()))
        print(f"failed frames by stage: {stages}; each is a row of {result.run / 'errors'} with its reason "
              "(--retry-errors attempts them again)")
    print(f"run folder: {result.run}")
    return result


def cmd_segment(a: argparse.Namespace) -> int:
    return 1 if _segment(a).failed and a.fail_on_error else 0


def _print_analysis(res) -> None:
    from nucleiscreen.engine.screen.analyze import format_summary

    print()
    print(format_summary(res))


def _analysis_options(a: argparse.Namespace) -> dict:
    from nucleiscreen.engine.screen.qc import FrameQC
    from nucleiscreen.engine.screen.readouts import Readout
    from nucleiscreen.engine.screen.rules import DEFAULT_RULES, HitRule

    rules = []
    for text in a.rule or []:
        name, sep, expr = text.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--rule takes NAME='CONDITIONS', e.g. strong_loss='count_fc < 0.1', not {text!r}")
        rules.append(HitRule.parse(name.strip(), expr))
    reference = [r.strip() for r in a.reference.split(",") if r.strip()] if a.reference else "negative"
    readouts = tuple(Readout.parse(text) for text in a.readout) if a.readout else None
    return {"frame_qc": None if a.no_frame_qc else FrameQC(), "z_prime_min": a.z_prime_min,
            "report": not a.no_report, "rules": tuple(rules) or DEFAULT_RULES, "reference": reference,
            "readouts": readouts}


def cmd_analyze(a: argparse.Namespace) -> None:
    from nucleiscreen.engine.screen.analyze import analyze

    _print_analysis(analyze(a.run, a.layout, a.out, **_analysis_options(a)))


def cmd_run(a: argparse.Namespace) -> int:
    from nucleiscreen.engine.screen.analyze import analyze
    from nucleiscreen.engine.screen.layout import read_layout

    if a.shard:
        raise UserError("--shard splits `segment` over processes; run `nucleiscreen analyze` once all shards are done")
    read_layout(a.layout)  # a broken layout should fail before hours of segmentation, not after
    result = _segment(a)
    _print_analysis(analyze(result.run, a.layout, **_analysis_options(a)))
    return 1 if result.failed and a.fail_on_error else 0


def cmd_demo(a: argparse.Namespace) -> None:
    from nucleiscreen.demo import demo

    demo(a.out, plates=a.plates, fields=a.fields, size=a.size, threads=a.threads, quiet=a.quiet)


def cmd_bench(a: argparse.Namespace) -> None:
    what = a.what or ("suite" if a.quick else "pipeline")
    given = {k: v for k, v in (("frames", a.frames), ("size", a.size)) if v is not None}  # else each bench's own
    if what == "suite":
        from nucleiscreen.bench.suite import main as bench_suite

        bench_suite(quick=a.quick, out=a.out, progress=not a.quiet)
    elif what == "host":
        from nucleiscreen.bench.host import main as bench_host

        bench_host(cores=a.threads, channels=a.channels or 1, **given)
    elif what == "gpu":
        from nucleiscreen.bench.gpu import main as bench_gpu

        bench_gpu(out=a.out, model=a.model, quick=a.quick, **{k: v for k, v in given.items() if k == "frames"})
    elif what == "kernels":
        from nucleiscreen.bench.kernels import main as bench_kernels

        bench_kernels(threads=a.threads)
    elif what == "cpu":
        from nucleiscreen.bench.cpu import main as bench_cpu

        bench_cpu(**{k: v for k, v in given.items() if k == "frames"})
    elif what == "stages":
        from nucleiscreen.bench.stages import main as bench_stages

        bench_stages(**given)
    elif what == "reliability":
        from nucleiscreen.bench.reliability import main as bench_reliability

        bench_reliability()  # 3 plates of 96^2 frames, 10 kills; python -m nucleiscreen.bench.reliability for more
    else:
        from nucleiscreen.bench.pipeline import main as bench_pipeline

        bench_pipeline(model=a.model, backend=a.backend, batch_size=a.batch_size, threads=a.threads,
                       overrides=_overrides(a), **given)


# ------------------------------------------------------------------------------------------------------ parser
def _defaults(owner) -> dict:
    """The defaults of a function's parameters or a dataclass's fields: the CLI shows its owners' defaults (each is
    written once, where it is used) rather than copies of them."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner)}
    return {k: p.default for k, p in inspect.signature(owner).parameters.items()}


def _pixel_size(text: str) -> float | str | None:
    if text in ("auto", "model"):
        return text if text == "auto" else None  # model: the model's own scale, no estimate
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of um, auto or model, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _print_scale(name: str, estimate) -> None:
    print(f"scale of {name}: {estimate.scale:.3f} ({estimate.note})")


def _print_illum(plate: str, channel: str, function, frames: int) -> None:
    print(f"illumination of {plate}, {channel}: {function.falloff:.0%} fall-off from the brightest part of the field "
          f"({frames} frames)")


def _print_image_scale(name: str, estimate) -> None:
    if estimate.scale != 1.0:  # predict: only the images resized
        _print_scale(name, estimate)


def _engine_options(p: argparse.ArgumentParser, batch: bool = True, pixel_size: bool = True) -> None:
    p.add_argument("--model", help="ONNX model file (default: the U-Net shipped with nucleiscreen)")
    if pixel_size:
        p.add_argument("--pixel-size", type=_pixel_size, default="auto",
                       help="um per pixel of the frames when it differs from the model's (e.g. a 40x screen): frames "
                            "are resized to the model's pixel size for inference. auto (the default): estimated "
                            "from the nuclei of a sample of frames, once per plate (segment, run) or per image "
                            "(predict), and kept when within 5%% (a plate) or 15%% (an image) of the model's; "
                            "model: the model's scale")
    p.add_argument("--min-contrast", type=float,
                   help="faint-object filter: small objects (under the card's contrast_area, 300 px at the model's "
                        "pixel size) whose mean exceeds the background around them by less than this (fraction of "
                        "the frame's intensity range) are dropped (default: the model card's, calibrated on its "
                        "training frames; 0 keeps every micronucleus the network draws)")
    p.add_argument("--min-area", type=int,
                   help="objects under this many pixels of the frame are dropped (default: the model card's, "
                        "calibrated on its training frames; 1 keeps every object the network draws)")
    p.add_argument("--min-edge-area", type=int,
                   help="objects touching the frame's edge under this many pixels (slivers of nuclei cut by the "
                        "frame) are dropped (default: the model card's, calibrated on its training frames; 0 keeps "
                        "them)")
    p.add_argument("--grow-area", type=int,
                   help="objects under this many pixels grow into the pixels around them that are bright enough "
                        "(the card's grow_level of the way from the background to the object) (default: the model "
                        "card's, calibrated on its training frames; 0: no growth)")
    p.add_argument("--backend", default="auto",
                   help="inference backend: auto, onnxruntime, openvino, tensorrt (ONNX files), torch (ONNX files "
                        "and .pt checkpoints; needs PyTorch and onnx) (default: %(default)s, the fastest available: "
                        "TensorRT, onnxruntime on CUDA, torch on CUDA, onnxruntime on the CPU; OpenVINO only when "
                        "asked for)")
    p.add_argument("--threads", type=int, help="worker threads for decoding and post-processing (default: all cores)")
    if batch:
        p.add_argument("--batch-size", type=int,
                       help="frames per inference batch (default: the backend's, 1 on the CPU, 16 on a GPU)")


def _segment_options(p: argparse.ArgumentParser) -> None:
    from nucleiscreen.engine.pipeline import SegmentOptions

    p.add_argument("sources", nargs="+", help="folders (searched recursively) or frame files")
    p.add_argument("--out", required=True, help="run folder to write (re-running resumes it)")
    p.add_argument("--pattern", default="auto",
                   help="file naming: auto, cx7, imagexpress, opera, or a regex with named groups (default: "
                        "%(default)s)")
    p.add_argument("--channels", metavar="NAME=TOKEN,...",
                   help="the channels of a field by name, each the channel token of the file names (CX7 d0, "
                        "ImageXpress w1, Opera ch1, or a number), e.g. DNA=d0,Lyso=d1,Cell=d2; the first is "
                        "segmented (default: the pattern's nuclei channel alone, named DNA)")
    p.add_argument("--nuclei-channel", metavar="NAME", help="the channel of --channels that is segmented "
                                                             "(default: the first)")
    p.add_argument("--channel", type=int, help="the nuclei channel's number as in the file names, named DNA (the "
                                               "same as --channels DNA=N; default: the pattern's)")
    p.add_argument("--illum", choices=["plate", "none"],
                   help="plate: each plate's flat field and background per marker channel, estimated from a sample "
                        "of its frames before the run (RUN/illum/), corrects those channels before they are measured; "
                        "none: measured raw (default: plate when --channels names a marker channel)")
    p.add_argument("--objects", action="store_true", help="also write one row per nucleus (RUN/objects/)")
    p.add_argument("--save-labels", action="store_true", help="write label TIFFs (RUN/labels/) for napari/Fiji")
    seg = _defaults(SegmentOptions)
    p.add_argument("--micronucleus-area", type=int, default=seg["micronucleus_area"],
                   help="objects under this area in px are micronuclei, not nuclei (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty the run folder first (needed to change the model or settings of an existing run)")
    p.add_argument("--retry-errors", action="store_true", help="attempt the frames of the error table again")
    p.add_argument("--shard", help="K/N: segment every N-th frame from the K-th (0-based) into the shared run "
                                   "folder, for N processes or nodes; 'slurm' takes K and N from a job array")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit 1 when any frame failed (default: 0 once every frame is in the image or error table)")
    p.add_argument("--checkpoint-seconds", type=float, default=seg["checkpoint_seconds"],
                   help="write the tables' parts at least this often, so a killed run loses at most about this much "
                        "work (default: %(default)s)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process; ray: work units (a plate, or 4,096 frames of one) on Ray actors that "
                        "write into the shared run folder (the [ray] extra) (default: %(default)s)")
    p.add_argument("--address", help="ray: the cluster to join (default: start a local Ray instance)")
    p.add_argument("--workers", type=int, help="ray: actors, each with --threads CPUs (default: local cores / threads)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="ray: GPUs each actor asks for (default: %(default)s)")
    _engine_options(p)


def _analysis_flags(p: argparse.ArgumentParser) -> None:
    from nucleiscreen.engine.screen.qc import Z_PRIME_MIN

    p.add_argument("--z-prime-min", type=float, default=Z_PRIME_MIN,
                   help="flag plates whose robust Z' (positive controls vs OTP) is under this (default: %(default)s)")
    p.add_argument("--no-frame-qc", action="store_true",
                   help="keep every frame (default: leave out-of-focus and saturated frames out of the wells)")
    p.add_argument("--no-report", action="store_true", help="write the tables but not report.html")
    p.add_argument("--rule", action="append", metavar="NAME='CONDITIONS'",
                   help="a hit rule, e.g. strong_loss='count_fc < 0.1' or big='count_fc < 0.5 and area_fc > 1.7' "
                        "(columns of the gene table; repeat for several; replaces the paper's two rules)")
    p.add_argument("--readout", action="append", metavar="NAME=AGGREGATION(COLUMN)",
                   help="a measure to normalize per plate and summarize per gene besides the nuclei count and area, "
                        "e.g. lyso_intensity=nuclei_mean(Intensity_MeanIntensity_Lyso); aggregations: nuclei_mean, "
                        "nuclei_median (over the well's nuclei), field_mean (over its fields); repeat for several; "
                        "it adds <name>_fc, <name>_robust_z, <name>_ssmd for --rule (default: every marker "
                        "channel's <channel>_intensity)")
    p.add_argument("--reference", metavar="NAMES",
                   help="control names the fold changes are relative to, comma-separated (default: the "
                        "non-targeting negative controls, e.g. OTP)")


def build_parser() -> argparse.ArgumentParser:
    from nucleiscreen.demo import demo  # the owners of the defaults the help shows
    from nucleiscreen.simulate import FRAME_SIZE, simulate_screen
    from nucleiscreen.trainer import FINETUNE_STEPS

    parser = argparse.ArgumentParser(
        prog="nucleiscreen",
        description="Segment Hoechst-stained nuclei across a plate screen with a U-Net, measure them, normalize to "
                    "negative controls and call hit genes.")
    parser.add_argument("--version", action="version", version=f"nucleiscreen {__version__}")
    # --debug and --quiet work before or after the subcommand; SUPPRESS keeps a subcommand from resetting them.
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("simulate", help="write a synthetic CX7 screen with ground truth and a layout file",
                       description="Write a synthetic screen: 384-well plates of 16-bit CX7-like Hoechst frames named "
                                   "like the real screen's, ground-truth masks, layout.csv and truth.csv.")
    p.add_argument("out", help="output folder (must be new or empty)")
    sim = _defaults(simulate_screen)
    p.add_argument("--plates", type=int, default=sim["plates"], help="plates (default: %(default)s)")
    p.add_argument("--fields", type=int, default=sim["fields"], help="fields per well (default: %(default)s)")
    p.add_argument("--size", type=int, default=sim["size"],
                   help="frame size in px at the CX7 pixel size (default: %(default)s)")
    p.add_argument("--format", default=sim["fmt"], choices=["tif", "c01"],
                   help="frame file format (default: %(default)s)")
    p.add_argument("--seed", type=int, default=sim["seed"], help="random seed (default: %(default)s)")
    p.add_argument("--wells-per-gene", type=int, default=sim["wells_per_gene"],
                   help="wells (siRNAs) per gene (default: %(default)s)")
    p.add_argument("--channels", type=int, default=sim["channels"],
                   help="channels per field, d0 = Hoechst (default: %(default)s)")
    p.add_argument("--no-masks", action="store_true", help="do not write ground-truth masks")
    p.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    p.set_defaults(func=cmd_simulate)

    p = add("train", help="train a model from a JSON config, or a sweep of them (needs the [train] extra)",
                       description="Train a U-Net (or the HoVer-style model) on annotated image/mask folders plus "
                                   "simulated frames; resumes from OUT/last.pt. --sweep trains several configurations, "
                                   "scores them and the classic baseline on validation, writes the comparison table "
                                   "and picks the winner. See trainer/configs/ for examples.")
    p.add_argument("--config", help="JSON training config")
    p.add_argument("--sweep", help="JSON sweep file (trainer/configs/sweep.json)")
    p.add_argument("--score-only", action="store_true",
                   help="with --sweep: do not train, only score the existing checkpoints and rewrite the table")
    p.add_argument("--finetune", metavar="DIR",
                   help="fine-tune a shipped model (--model) on your annotated frames: DIR holds images/ and masks/ "
                        "(or labels/), or images beside their masks (<name>_masks.tif, Cellpose's <name>_cp_masks.png)"
                        f"; a fifth is held out, --out names the .onnx to write; --steps (default {FINETUNE_STEPS})")
    p.add_argument("--model", help="with --finetune: the ONNX model to start from (default: the shipped one)")
    p.add_argument("--out", help="override the config's output folder (--finetune: the .onnx file to write)")
    p.add_argument("--steps", type=int, help="override the number of steps")
    p.add_argument("--device", help="cpu, cuda or auto (default: the config's)")
    p.add_argument("--restart", action="store_true", help="ignore OUT/last.pt and start from scratch")
    p.set_defaults(func=cmd_train)

    p = add("evaluate", help="F1 at IoU thresholds, Jaccard, splits/merges of label images",
                       description="Compare predicted label images (<stem>_labels.tif) with truth (<stem>.tif): F1 at "
                                   "IoU 0.50..0.95, precision/recall, mean matched IoU, the seed lab's Jaccard, "
                                   "pixel Jaccard, splits and merges.")
    p.add_argument("--pred", required=True, help="folder of <stem>_labels.tif predictions")
    p.add_argument("--truth", required=True, help="folder of <stem>.tif ground-truth labels")
    p.add_argument("--images", help="folder of the raw images: also score the classic baseline on them")
    p.add_argument("--json", help="also write the report as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = add("quantize", help="write the INT8 version of an ONNX model file for the CPU",
            description="Static post-training quantization with onnxruntime (QDQ, int8 weights per channel, uint8 "
                        "activations, MinMax ranges over the calibration frames; the head folded before its "
                        "up-sampling, the first convolution, the refinement branch and the head kept in FP32). The "
                        "shipped unet-small-int8 is this on the lab's 30 training frames.")
    p.add_argument("model", help="the FP32 ONNX model file (or a shipped model's name)")
    p.add_argument("--calibration", required=True,
                   help="folder of raw training frames (never validation ones) at the model's pixel size")
    p.add_argument("--out", required=True, help="INT8 ONNX file to write")
    p.set_defaults(func=cmd_quantize)

    p = add("export", help="export a checkpoint to ONNX with its model card (needs [train])",
                       description="Export a trained checkpoint to ONNX: input 'image' Nx1xHxW, output 'classes' uint8 "
                                   "NxHxW (ArgMax in the graph), the model card in the metadata.")
    p.add_argument("checkpoint", help="best.pt or last.pt from `nucleiscreen train`")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--fp16", action="store_true", help="FP16 weights and input (for TensorRT); CPU uses FP32")
    p.add_argument("--probabilities", action="store_true", help="also output the softmax probabilities")
    p.add_argument("--tta", type=int, default=1, metavar="N",
                   help="test-time augmentation in the graph: average the softmax over N of the 8 flips and quarter "
                        "turns (1, 2, 4 or 8; costs N forward passes per frame) (default: %(default)s, none)")
    p.add_argument("--tensorrt", metavar="HxW",
                   help="also build the TensorRT plan for frames of this size as the network sees them (after any "
                        "--pixel-size rescaling of segment; optimization profile batch 1-32, timing cache; cached per "
                        "GPU and TensorRT version where the tensorrt backend finds it)")
    p.set_defaults(func=cmd_export)

    p = add("predict", help="segment individual images into label TIFFs",
                       description="Segment images (TIFF, PNG, C01; files or folders) and write "
                                   "OUT/<stem>_labels.tif instance labels that open in napari and Fiji.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--channels", metavar="NAME=TOKEN,...",
                   help="the images are fields of a screen's channels (as segment --channels): the first, or "
                        "--nuclei-channel, is segmented and every one measured in its nuclei")
    p.add_argument("--nuclei-channel", metavar="NAME", help="with --channels: the channel segmented")
    p.add_argument("--pattern", default="auto", help="with --channels: the file naming (as segment's) "
                                                      "(default: %(default)s)")
    _engine_options(p, batch=False)
    p.set_defaults(func=cmd_predict)

    p = add("segment", help="segment every frame of a screen into a run folder",
                       description="Discover the frames of a screen, segment nuclei and write the per-frame image "
                                   "table (and optionally objects and labels) to a run folder. Re-running resumes.")
    _segment_options(p)
    p.set_defaults(func=cmd_segment)

    p = add("analyze", help="aggregate a run folder per well and gene, normalize, call hits",
                       description="Aggregate the run's image table per well and gene, normalize per plate to the "
                                   "negative-control (OTP) wells, compute plate QC and call hits; writes "
                                   "RUN/analysis/ (wells, genes, plates, controls, hits.csv, report.html).")
    p.add_argument("run", help="run folder written by `nucleiscreen segment`")
    p.add_argument("--layout", required=True, help="plate layout: CSV, TSV or Parquet")
    p.add_argument("--out", help="analysis folder (default: RUN/analysis)")
    _analysis_flags(p)
    p.set_defaults(func=cmd_analyze)

    p = add("run", help="segment + analyze in one command",
                       description="Segment a screen into a run folder, then analyze it with the layout.")
    _segment_options(p)
    p.add_argument("--layout", required=True, help="plate layout: CSV, TSV or Parquet")
    _analysis_flags(p)
    p.set_defaults(func=cmd_run)

    p = add("demo", help="simulate a small screen, run everything, print the hits",
                       description="Simulate a small CX7-like screen with planted hits, segment it with the shipped "
                                   "U-Net on the CPU, analyze it and print the hit table (a few minutes on 2 cores).")
    dem = _defaults(demo)
    p.add_argument("--out", default=dem["out"], help="output folder (default: ./%(default)s)")
    p.add_argument("--plates", type=int, default=dem["plates"], help="plates (default: %(default)s)")
    p.add_argument("--fields", type=int, default=dem["fields"], help="fields per well (default: %(default)s)")
    p.add_argument("--size", type=int, default=dem["size"], help="frame size in px (default: %(default)s)")
    p.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    p.set_defaults(func=cmd_demo)

    p = add("bench", help="measure the segmentation pipeline's throughput",
                       description="pipeline: time each stage on simulated frames and compare the overlapped engine "
                                   "with a plain sequential loop measured in the same run. host: the host side's "
                                   "frames/s per core with a network that costs nothing, on 1 core and on all. gpu: "
                                   "the torch backend on CUDA, inference alone and end to end (skips without a GPU). "
                                   "kernels: post-processing against OpenCV and scikit-image (needs the [bench] "
                                   "extra). cpu: the classic pipeline, the FP32 and the INT8 model side by "
                                   "side, core-s per frame and F1 on the lab's validation frames (needs [train]). "
                                   "stages: each stage of a frame's path on one core (decode per format, QC, "
                                   "normalization, inference per model, post-processing, writing) and the engine end "
                                   "to end. "
                                   "reliability: a simulated screen with bad frames, SIGKILLed 10 times, then "
                                   "checked for lost, doubled and orphaned rows (a few minutes).")
    p.add_argument("what", nargs="?", choices=["pipeline", "host", "gpu", "kernels", "cpu", "stages", "reliability",
                                           "suite"],
                   help="what to measure (default: pipeline; with --quick alone: the whole suite, small)")
    p.add_argument("--frames", type=int, help="frames to process (default: each benchmark's own, in its --help "
                                              "section above and its module)")
    p.add_argument("--out", default="bench-results", help="gpu, suite: folder for the JSON and Markdown results")
    p.add_argument("--quick", action="store_true",
                   help="alone: every benchmark, small (under 2 minutes); gpu: fewer batch sizes and frames")
    p.add_argument("--size", type=int, help=f"frame size in px (default: the CX7's, {FRAME_SIZE})")
    p.add_argument("--channels", type=int, help="host: channels per field, 1 or 3 (the Hoechst frame and two markers, "
                                                "every one measured) (default: 1)")
    _engine_options(p, pixel_size=False)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output piped into a reader that stopped early (| head): quiet, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
