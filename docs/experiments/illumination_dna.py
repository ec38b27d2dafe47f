"""Does correcting the nuclei channel's illumination before the network change its F1 on the lab's frames?

The lab's 40 annotated frames (train + val, one CX7 screen) are the sample the function is estimated from, as one
plate's would be (kernels/illumination.py); the 10 validation frames are segmented as they are and corrected, each
through `predict` with the defaults at the model's scale, and scored against the annotations.

    python docs/experiments/illumination_dna.py     # prints the fall-off and F1@0.5/0.7/0.9 of both
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from nucleiscreen.engine.readers import read_frame
from nucleiscreen.kernels.illumination import block_mean, correct, illumination_function
from nucleiscreen.trainer.evaluate import evaluate_folders

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "aitslab-bioimaging1"
frames = sorted((DATA / "train" / "images").glob("*.png")) + sorted((DATA / "val" / "images").glob("*.png"))
raws = [read_frame(p) for p in frames]
f = illumination_function(np.stack([block_mean(r) for r in raws]), raws[0].shape)
print(f"illumination of the lab's 40 frames: {f.falloff:.1%} fall-off, b0 {f.b0:.1f}")
background, inverse = f.at_frame_size()
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    for name in ("raw", "corrected"):
        (tmp / name).mkdir()
    for p in sorted((DATA / "val" / "images").glob("*.png")):
        raw = read_frame(p)
        tifffile.imwrite(tmp / "raw" / f"{p.stem}.tif", raw)
        tifffile.imwrite(tmp / "corrected" / f"{p.stem}.tif",
                         np.clip(np.rint(correct(raw, background, inverse, f.b0)), 0, 255).astype(np.uint8))
    for name in ("raw", "corrected"):
        subprocess.run([sys.executable, "-m", "nucleiscreen", "--quiet", "predict", str(tmp / name), "--out",
                        str(tmp / f"{name}-pred"), "--pixel-size", "model"], check=True, capture_output=True)
        report = evaluate_folders(tmp / f"{name}-pred", DATA / "val" / "masks")["summary"]
        print(name, " ".join(f"F1@{t} {report['f1'][t]:.3f}" for t in ("0.50", "0.70", "0.90")))
