"""Fine-tune the shipped model on the lab's training frames plus the DSB 2018 fluorescence images outside the held-out
split (each resized to the model's nucleus size), with 10 % simulated frames; validated on the lab's validation frames.

    python docs/experiments/finetune_general.py STEPS OUT.onnx   (then predict + evaluate, see docs/training.md)
"""

import sys
import time
from pathlib import Path

from nucleiscreen.engine.model import load_model_info
from nucleiscreen.trainer.data import Source, dsb_held_out
from nucleiscreen.trainer.finetune import find_annotations, load_annotations, model_target, train_onnx, write_model

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
steps, out = int(sys.argv[1]), Path(sys.argv[2])
info = load_model_info()
target = model_target(info)
lab, _ = load_annotations(find_annotations(DATA / "aitslab-bioimaging1" / "train"), info, target)
val, _ = load_annotations(find_annotations(DATA / "aitslab-bioimaging1" / "val"), info, target)
dsb_pairs = [p for p in find_annotations(DATA / "dsb2018-fluorescence") if not dsb_held_out(p[0].stem)]
dsb, _ = load_annotations(dsb_pairs, info, target, per_image=True)
print(f"lab {len(lab)}, dsb {len(dsb)} training images, lab val {len(val)}", flush=True)
t0 = time.time()
net, before, after, post = train_onnx(info, [Source(lab, 0.5), Source(dsb, 0.5)], val, lab[:12], steps, batch=8,
                                      crop=256, lr=3e-4, sim_fraction=0.1)
print(f"{steps} steps in {(time.time() - t0) / 60:.1f} min", flush=True)
for name, m in (("shipped", before), ("fine-tuned", after)):
    print(name, {k: m["f1"][k] for k in ("0.50", "0.70", "0.90")}, "pixel Jaccard", round(m["pixel_jaccard"], 4))
write_model(info, net, post, out, {"finetuned_from": {"path": str(info.path), "sha256": info.sha256},
                                   "sources": ["aitslab-bioimaging1/train", "dsb2018-fluorescence (ids 4-f)"],
                                   "steps": steps, "batch": 8, "crop": 256, "lr": 3e-4, "simulated_fraction": 0.1},
            after)
print(f"wrote {out}")
