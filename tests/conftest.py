from pathlib import Path

import numpy as np
import pytest
import tifffile

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AITS = SHARED_DATA / "aitslab-bioimaging1"


@pytest.fixture(scope="session")
def aits() -> Path:
    if not AITS.is_dir():
        pytest.skip(f"shared data not found at {AITS}")
    return AITS


def _annotated_folder(root: Path, n: int = 2, size: int = 96) -> Path:
    from nucleiscreen.simulate import FrameSpec, synth_frame

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, lab = synth_frame(np.random.default_rng(i), (size, size), FrameSpec(nuclei_per_frame=600))
        tifffile.imwrite(root / "images" / f"f{i}.tif", img)
        tifffile.imwrite(root / "masks" / f"f{i}.tif", lab)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 2-step training run of a tiny U-Net on simulated annotated frames: (folder, config)."""
    pytest.importorskip("torch")
    from nucleiscreen.trainer.config import TrainConfig
    from nucleiscreen.trainer.train import train

    tmp = tmp_path_factory.mktemp("train")
    folder = _annotated_folder(tmp / "data")
    cfg = {"out": str(tmp / "run"), "train": [{"path": str(folder)}], "val": str(folder), "sim_fraction": 0.5,
           "model": {"depth": 2, "base": 4}, "crop": 64, "batch": 2, "steps": 2, "val_every": 2, "warmup": 1,
           "threads": 1}
    train(TrainConfig.from_dict(cfg), progress=False)
    return tmp, cfg
