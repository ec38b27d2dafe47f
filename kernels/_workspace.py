"""Scratch buffers kept per thread: the kernels release the GIL, so frames are processed on threads, each reusing its
own buffers from frame to frame instead of allocating them anew. ``per_thread`` keeps them, for the run kernels
(``Workspace``) and the perimeter (``_perimeter.Planes``) alike."""

from __future__ import annotations

import threading
from typing import TypeVar

import numpy as np

_local = threading.local()
_Scratch = TypeVar("_Scratch")


def per_thread(kind: type[_Scratch], h: int, w: int) -> _Scratch:
    """This thread's ``kind(h, w)``: made on the first call and whenever the frame shape changes, reused otherwise.

    ``kind`` is a class of scratch buffers made from a frame shape, with that shape as its ``shape``.
    """
    held = vars(_local)  # this thread's own dict
    scratch = held.get(kind)
    if scratch is None or scratch.shape != (h, w):
        scratch = held[kind] = kind(h, w)
    return scratch


class Workspace:
    """Scratch buffers of the run kernels (``runs.py``, ``instances.py``) for frames of one shape.

    Bit planes are laid out as ``_bits.py`` says. ``lab`` is an int32 image padded with a ring of zeros, pixel (y, x)
    at (y + 1) * (w + 2) + x + 1; it stays zero between calls.
    """

    def __init__(self, h: int, w: int):
        self.shape = (h, w)
        self.nw = w // 64 + 1
        size = (h + 2) * self.nw + 1  # + 1: a zero word after the last row, for reads one word past a row's end
        self.ip = np.zeros(size, np.uint64)  # interior (or foreground) pixels
        self.bp = np.zeros(size, np.uint64)  # boundary pixels
        self.cp = np.zeros(size, np.uint64)  # boundary pixels that growth reaches
        self.front = np.zeros((2, size), np.uint64)  # growth fronts of the last two rounds
        self.front_rows = np.zeros((2, h + 2), np.bool_)  # rows of each front that are not all zero
        runs = h * (w // 2 + 1) + 1  # at most one run per two columns per row (np.empty: pages come when used)
        self.ix0, self.ix1, self.iparent, self.iorun = (np.empty(runs, np.int32) for _ in range(4))
        self.ox0, self.ox1, self.oparent, self.orow, self.opairs = (np.empty(runs, np.int32) for _ in range(5))
        self.osub = np.empty(runs + 1, np.int32)
        self.oi0 = np.empty(runs + 1, np.int32)
        self.irs = np.empty(h + 1, np.int64)
        self.ors = np.empty(h + 1, np.int64)
        self.lab = np.zeros((h + 2) * (w + 2), np.int32)
        self.queue = np.empty(max(h * w, 1), np.int32)
        pieces = max(h * w, 1)  # sub-runs and final runs: at most one per pixel
        self.sx0, self.sx1, self.sseed = (np.empty(pieces, np.int32) for _ in range(3))
        self.fx0, self.fx1, self.fid = (np.empty(pieces, np.int32) for _ in range(3))
        self.frs = np.empty(h + 1, np.int64)
        self.touch = np.empty(h, np.bool_)  # rows where objects may touch other objects
        self.gx0, self.gx1, self.gparent, self.gown, self.gflag = (np.empty(runs + 2 * h, np.int32) for _ in range(5))
        self.hy, self.hx0, self.hx1, self.hseed = (np.empty(runs, np.int32) for _ in range(4))  # holes: one per gap
