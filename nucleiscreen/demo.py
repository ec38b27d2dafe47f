"""``nucleiscreen demo``: simulate a small screen with planted hits, segment it on the CPU, analyze, print hits.

Everything the real screen goes through, at a size that takes a few minutes on two cores: 384-well plates of
CX7-like 16-bit frames (smaller than 1104^2, at the same pixel size), the shipped U-Net through onnxruntime,
numba post-processing, polars analysis, the paper's hit rules. Re-running the same command reuses the simulated
screen and resumes the segmentation.
"""

from __future__ import annotations

import time
from pathlib import Path

from nucleiscreen.engine.pipeline import SegmentOptions
from nucleiscreen.engine.run import segment
from nucleiscreen.engine.screen.analyze import analyze, format_summary
from nucleiscreen.simulate import PLANTED, simulate_screen


def demo(out: str | Path = "nucleiscreen-demo", plates: int = 2, fields: int = 2, size: int = 512,
         threads: int | None = None, quiet: bool = False) -> dict:
    out = Path(out)
    screen = out / "screen"
    t0 = time.time()
    if (screen / "layout.csv").exists():
        print(f"reusing the simulated screen in {screen}")
    else:
        n = plates * 384 * fields
        print(f"simulating {plates} plate(s) x 384 wells x {fields} field(s) = {n} frames of {size}x{size} px ...")
        simulate_screen(screen, plates=plates, fields=fields, size=size, masks=False, workers=threads,
                        progress=not quiet)
    t1 = time.time()
    result = segment([screen / "images"], out / "run", options=SegmentOptions(threads=threads, progress=not quiet))
    t2 = time.time()
    res = analyze(result.run, screen / "layout.csv")
    t3 = time.time()

    print()
    print(format_summary(res))
    called = set(res.hits["gene_symbol"].to_list()) if res.hits.height else set()
    planted = set(PLANTED)
    print(f"\nplanted hits recovered: {len(planted & called)}/{len(planted)} "
          f"({', '.join(sorted(planted & called)) or 'none'}); "
          f"neutral genes called: {len(called - planted)} ({', '.join(sorted(called - planted)) or 'none'})")
    print(f"times: simulate {t1 - t0:.0f}s, segment {t2 - t1:.0f}s ({result.backend}), analyze {t3 - t2:.1f}s")
    print(f"\noutputs: run folder {result.run} (images/, manifest.json), analysis {res.out_dir} "
          f"(hits.csv, report.html), simulated frames {screen / 'images'}, layout {screen / 'layout.csv'}")
    return {"hits": res.hits, "controls": res.controls, "planted_called": sorted(planted & called),
            "neutral_called": sorted(called - planted), "run": result.run, "analysis": res.out_dir}
