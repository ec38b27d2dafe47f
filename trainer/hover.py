"""A HoVer-Net-style model, the second U-shaped architecture the seed lab compared (Graham et al. 2019, simplified).

One encoder (the U-Net's) feeds two decoders:

- the **nuclear-pixel (NP) branch**: 2 logits per pixel, background / nucleus;
- the **horizontal-vertical (HV) branch**: for every nucleus pixel its horizontal and vertical distance to the
  nucleus's centroid, scaled per object and side to [-1, 1] (HoVer-Net's target); 0 on background.

The network returns one tensor, N x 4 x H x W: NP logits (channels 0-1) and HV maps (channels 2-3).

Loss (HoVer-Net's): cross-entropy + soft Dice on NP; mean squared error of HV over all pixels plus twice the mean
squared error of the HV maps' Sobel gradients over nucleus pixels.

Post-processing (HoVer-Net's marker-controlled watershed, ``hover_instances``): foreground = P(nucleus) > 0.5; the
Sobel gradients of the HV maps are large between nuclei, so markers = foreground where the larger normalized gradient is
below ``marker_level``, opened and labelled; a watershed of the smoothed "gradient distance" from those markers, inside
the foreground, gives the instances; objects under ``min_area`` px are dropped. Needs SciPy and scikit-image.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nucleiscreen.errors import UserError
from nucleiscreen.network import Decoder, Encoder, UNetConfig


@numba.njit(nogil=True, cache=True)
def hv_maps(labels):
    """HoVer-Net's HV target (2 x H x W float32) of an instance label image: x and y offsets to each object's centroid,
    the negative and positive sides of each object scaled separately to [-1, 0] and [0, 1]."""
    h, w = labels.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if labels[y, x] > n:
                n = labels[y, x]
    cnt = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    sy = np.zeros(n + 1)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k > 0:
                cnt[k] += 1
                sx[k] += x
                sy[k] += y
    cx = sx / np.maximum(cnt, 1)
    cy = sy / np.maximum(cnt, 1)
    lo_x = np.zeros(n + 1)
    hi_x = np.zeros(n + 1)
    lo_y = np.zeros(n + 1)
    hi_y = np.zeros(n + 1)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k > 0:
                lo_x[k] = min(lo_x[k], x - cx[k])
                hi_x[k] = max(hi_x[k], x - cx[k])
                lo_y[k] = min(lo_y[k], y - cy[k])
                hi_y[k] = max(hi_y[k], y - cy[k])
    out = np.zeros((2, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            k = labels[y, x]
            if k > 0:
                dx = x - cx[k]
                dy = y - cy[k]
                out[0, y, x] = dx / hi_x[k] if dx > 0 else (-dx / lo_x[k] if dx < 0 else 0.0)
                out[1, y, x] = dy / hi_y[k] if dy > 0 else (-dy / lo_y[k] if dy < 0 else 0.0)
    return out


class HoVerNet(nn.Module):
    """The U-Net's encoder with an NP decoder and an HV decoder; see the module docstring."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoders = nn.ModuleList([Decoder(cfg), Decoder(cfg)])
        self.heads = nn.ModuleList([nn.Conv2d(cfg.base, 2, 1), nn.Conv2d(cfg.base, 2, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        np_logits, hv = (head(dec(x, skips)) for dec, head in zip(self.decoders, self.heads))
        return torch.cat([np_logits, torch.tanh(hv)], dim=1)


def _sobel(hv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dx of the horizontal map and d/dy of the vertical map (3 x 3 Sobel), N x 1 x H x W each."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=hv.device) / 4.0
    gx = F.conv2d(hv[:, :1], k[None, None], padding=1)
    gy = F.conv2d(hv[:, 1:], k.t()[None, None], padding=1)
    return gx, gy


def hover_loss(out: torch.Tensor, foreground: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
    """HoVer-Net's loss: NP cross-entropy + Dice, HV MSE + 2 x MSE of the HV gradients on nucleus pixels."""
    out = out.float()
    logits, pred_hv = out[:, :2], out[:, 2:]
    target = foreground.long()
    loss = F.cross_entropy(logits, target)
    prob = torch.softmax(logits, 1)[:, 1]
    fg = foreground.float()
    loss = loss + 1.0 - (2 * (prob * fg).sum() + 1.0) / (prob.sum() + fg.sum() + 1.0)
    loss = loss + F.mse_loss(pred_hv, hv)
    pgx, pgy = _sobel(pred_hv)
    tgx, tgy = _sobel(hv)
    mask = fg[:, None]
    msge = (((pgx - tgx) ** 2 + (pgy - tgy) ** 2) * mask).sum() / (2 * mask.sum()).clamp_min(1.0)
    return loss + 2.0 * msge


def hover_instances(out: np.ndarray, min_area: int = 4, marker_level: float = 0.4) -> np.ndarray:
    """Instances (int32 H x W) from the network's 4 x H x W output by HoVer-Net's marker-controlled watershed."""
    try:
        from scipy import ndimage as ndi
        from skimage.segmentation import watershed
    except ImportError:
        raise UserError("HoVer post-processing needs SciPy and scikit-image: "
                        "pip install 'nucleiscreen[train]'") from None
    logits = out[:2].astype(np.float32)
    p_fg = 1.0 / (1.0 + np.exp(logits[0] - logits[1]))
    fg = p_fg > 0.5
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    cc, _ = ndi.label(fg)
    fg &= (np.bincount(cc.ravel()) >= min_area)[cc]
    grads = []
    for axis, channel in ((1, 0), (0, 1)):
        g = np.abs(ndi.sobel(out[2 + channel].astype(np.float32), axis=axis))
        grads.append(g / max(float(g.max()), 1e-6))
    edge = np.maximum(grads[0], grads[1]) * fg
    markers = ndi.binary_opening(fg & (edge < marker_level))
    markers, _ = ndi.label(markers)
    # Small nuclei (micronuclei) with no marker left after opening get one at their own component.
    cc, _ = ndi.label(fg)
    orphans = np.setdiff1d(np.unique(cc[fg]), np.unique(cc[markers > 0]))
    if orphans.size:
        lut = np.zeros(int(cc.max()) + 1, np.int32)
        lut[orphans] = np.arange(int(markers.max()) + 1, int(markers.max()) + 1 + orphans.size)
        markers = np.where(markers > 0, markers, lut[cc])
    energy = -ndi.gaussian_filter((1.0 - edge) * fg, 1.0)
    labels = watershed(energy, markers, mask=fg).astype(np.int32)
    labels[(np.bincount(labels.ravel()) < min_area)[labels]] = 0
    return labels
