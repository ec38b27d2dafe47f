"""Starting weights of a training run: one checkpoint's, a smaller network's grown by a refinement branch, the mean
of several checkpoints' (a weight average), or a model file's own graph (``Logits``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nucleiscreen.engine.backends.onnx_torch import OnnxModule
from nucleiscreen.errors import UserError
from nucleiscreen.network import UNetConfig
from nucleiscreen.trainer.config import TrainConfig


def load_weights(path: str, cfg: TrainConfig, net: torch.nn.Module) -> dict:
    """The model weights of a checkpoint, checked against the configured architecture.

    A checkpoint of the same U-Net without the refinement branch (``refine`` 0) also starts a network that has one:
    its weights are taken over, the branch keeps ``net``'s initial weights and the classifier gets zero weights for
    the branch's features, so training starts from exactly the checkpoint's predictions."""
    if not Path(path).is_file():
        raise UserError(f"init checkpoint not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    theirs = ck.get("config", {})
    if "model" not in theirs:
        return ck["model"]
    mine = (UNetConfig(**theirs["model"]), theirs.get("arch", "unet"))
    if mine == (cfg.model, cfg.arch):
        return ck["model"]
    grows = cfg.arch == "unet" and mine[1] == "unet" and mine[0].refine == 0 and \
        replace(mine[0], refine=cfg.model.refine, refine_convs=cfg.model.refine_convs) == cfg.model
    if not grows:
        raise UserError(f"init checkpoint {path} is a {theirs.get('arch', 'unet')} {theirs['model']} network; the "
                        f"configuration asks for a {cfg.arch} {cfg.model.to_dict()}")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.update({k: v for k, v in ck["model"].items() if k != "head.weight"})
    head = torch.zeros_like(state["head.weight"])
    head[:, :cfg.model.base] = ck["model"]["head.weight"]
    state["head.weight"] = head
    return state


def initial_weights(init: str | list[str], cfg: TrainConfig, net: torch.nn.Module) -> dict:
    """The weights ``init`` names: one checkpoint's (``load_weights``), or the mean of several checkpoints' weights.

    Averaging the weights of networks fine-tuned from one start (other seeds, other losses) lands between their
    minima, where the loss is usually lower than at either ("model soups", Wortsman et al. 2022), at the inference
    cost of one network; networks from different starts do not average (their units are not aligned). BatchNorm
    running statistics are averaged like the weights."""
    states = [load_weights(p, cfg, net) for p in ([init] if isinstance(init, str) else init)]
    if len(states) == 1:
        return states[0]
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


class Logits(OnnxModule):
    """A model file's graph up to the network's logits (the last convolution), with trainable weights. Its batch
    norms were folded into the convolutions at export, so training it keeps their statistics fixed (fine-tuning);
    ``trainer/export.py`` writes the weights back into a copy of the file."""

    def __init__(self, path: Path):
        super().__init__(path)
        convs = [i for i, (fn, _, _, _) in enumerate(self.nodes) if fn.__name__ == "_conv"]
        self.nodes = self.nodes[:convs[-1] + 1]
        self.output = self.nodes[-1][2][0]
        for p in self.params:
            p.requires_grad_(True)
