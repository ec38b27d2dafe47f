"""Scratch buffers kept per thread: the kernels release the GIL, so frames are processed on threads, each reusing its
own buffers from frame to frame instead of allocating them anew. ``per_thread`` keeps them, for the run kernels
(``workspace``) and the perimeter (``_perimeter.planes``) alike.

The buffers are grouped in named tuples of arrays (``Workspace`` and its parts), so that a kernel takes a few groups
and reads the arrays by name, ``ws.seeds.x0``, instead of taking dozens of arrays whose order nobody could check by
eye. What that costs, measured on the benchmark's frame:

- Between kernels, nothing; from Python, numba types a named tuple anew at each call, in Python: about 14 us for the
  whole ``Workspace`` against 5 us for its arrays one by one. So the entry points call one kernel per step with the
  groups it needs, and results come back as one named tuple.
- A field read inside a hot loop is read anew on every pass (a 1 M element loop ``r.a[i] = r.b[i] + 1`` took 1.3 x
  as long as with ``a = r.a`` and ``b = r.b`` read before it): a kernel reads the fields its hot loops use into
  locals first.
- numba's cache (``__pycache__/*.nbi``, ``*.nbc``) records the classes of the named tuples a kernel takes (these,
  ``Planes``, ``Sums``, ``Boxes``) by name, and numba 0.68 fails on a cache that names a class which no longer exists
  (numba issue #6018: an AttributeError, not a recompilation). After renaming or removing one of these classes, or
  going back to a version from before them, delete those files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np

_local = threading.local()
_Scratch = TypeVar("_Scratch")


def per_thread(make: Callable[[int, int], _Scratch], h: int, w: int) -> _Scratch:
    """This thread's ``make(h, w)``: made on the first call and whenever the frame shape changes, reused otherwise.

    ``make`` makes scratch buffers for a frame shape, with that shape as their ``shape``.
    """
    held = vars(_local)  # this thread's own dict
    scratch = held.get(make)
    if scratch is None or scratch.shape != (h, w):
        scratch = held[make] = make(h, w)
    return scratch


class Runs(NamedTuple):
    """Objects as runs (maximal stretches of one object in a row, ``runs.py``): row y's runs are
    ``x0[starts[y]:starts[y + 1]]``, ``x1[...]`` (inclusive) and ``ids[...]``, in x order."""

    x0: np.ndarray
    x1: np.ndarray
    ids: np.ndarray
    starts: np.ndarray  # (h + 1,)


class BitPlanes(NamedTuple):
    """The class map (or a mask) as bit planes, laid out as ``_bits.py`` says, and the growth's planes."""

    nw: int  # words per row
    interior: np.ndarray  # interior (or foreground) pixels
    boundary: np.ndarray  # boundary pixels
    reached: np.ndarray  # boundary pixels that growth reaches
    front: np.ndarray  # (2, size): growth fronts of the last two rounds
    front_rows: np.ndarray  # (2, h + 2): rows of each front that are not all zero


class SeedRuns(NamedTuple):
    """Runs of interior pixels (the seeds), row y's at ``starts[y]`` .. ``starts[y + 1] - 1``."""

    x0: np.ndarray
    x1: np.ndarray
    parent: np.ndarray  # union-find parent; then (instances.py) each run's seed id
    object_run: np.ndarray  # the object run holding each seed run
    starts: np.ndarray


class ObjectRuns(NamedTuple):
    """Runs of objects before they are told apart: interior and reached boundary pixels (``instances.py``), or the
    foreground (``connected_components``); row y's at ``starts[y]`` .. ``starts[y + 1] - 1``."""

    x0: np.ndarray
    x1: np.ndarray
    parent: np.ndarray  # union-find parent; then the root run (the first) of each run's component
    row: np.ndarray
    pairs: np.ndarray  # runs of the row above that each run touches
    first_seed: np.ndarray  # seed runs of object run j: first_seed[j] .. first_seed[j + 1] - 1
    first_piece: np.ndarray  # pieces of object run j: first_piece[j] .. first_piece[j + 1] - 1
    starts: np.ndarray


class Pieces(NamedTuple):
    """Object runs cut where their owner changes (one piece per object run but where seeds compete)."""

    x0: np.ndarray
    x1: np.ndarray
    seed: np.ndarray


class Gaps(NamedTuple):
    """Stretches between the runs of one component in a row, and outside its first and last run (``_holes.py``)."""

    x0: np.ndarray
    x1: np.ndarray
    parent: np.ndarray  # union-find parent
    owner: np.ndarray  # the seed of the neighbours (0: none yet, -1: several)
    flags: np.ndarray  # _holes.py's OUT | IMPURE


class Holes(NamedTuple):
    """Holes found, as runs: row, first and last column, and the seed that fills them."""

    y: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    seed: np.ndarray


class Workspace(NamedTuple):
    """Scratch buffers of the run kernels (``runs.py``, ``instances.py``) for frames of one shape: ``workspace(h, w)``.

    ``owners`` is an int32 image padded with a ring of zeros, pixel (y, x) at (y + 1) * (w + 2) + x + 1; it stays
    zero between calls.
    """

    shape: tuple[int, int]
    planes: BitPlanes
    seeds: SeedRuns
    objects: ObjectRuns
    pieces: Pieces
    runs: Runs  # the result: the final objects
    touch: np.ndarray  # (h,): rows where objects may touch other objects
    gaps: Gaps
    holes: Holes
    owners: np.ndarray  # who claims each pixel in the contested growth (_growth.py)
    queue: np.ndarray  # the contested growth's claimed pixels, in order


def workspace(h: int, w: int) -> Workspace:
    """A new ``Workspace`` for h x w frames."""
    nw = w // 64 + 1
    size = (h + 2) * nw + 1  # + 1: a zero word after the last row, for reads one word past a row's end
    planes = BitPlanes(
        nw, np.zeros(size, np.uint64), np.zeros(size, np.uint64), np.zeros(size, np.uint64),
        np.zeros((2, size), np.uint64), np.zeros((2, h + 2), np.bool_),
    )  # fmt: skip
    runs = h * (w // 2 + 1) + 1  # at most one run per two columns per row (np.empty: pages come when used)
    pieces = max(h * w, 1)  # sub-runs and final runs: at most one per pixel

    def ints(n: int, count: int) -> list[np.ndarray]:
        return [np.empty(n, np.int32) for _ in range(count)]

    return Workspace(
        shape=(h, w),
        planes=planes,
        seeds=SeedRuns(*ints(runs, 4), starts=np.empty(h + 1, np.int64)),
        objects=ObjectRuns(*ints(runs, 5), *ints(runs + 1, 2), starts=np.empty(h + 1, np.int64)),
        pieces=Pieces(*ints(pieces, 3)),
        runs=Runs(*ints(pieces, 3), starts=np.empty(h + 1, np.int64)),
        touch=np.empty(h, np.bool_),
        gaps=Gaps(*ints(runs + 2 * h, 5)),  # a gap per run, and two outside stretches per row
        holes=Holes(*ints(runs, 4)),  # one per gap
        owners=np.zeros((h + 2) * (w + 2), np.int32),
        queue=np.empty(max(h * w, 1), np.int32),
    )
