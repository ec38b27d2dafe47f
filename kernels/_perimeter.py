"""The perimeter's border pixels in skimage's three weight classes (``measure.py``'s ``AreaShape_Perimeter``), as bit
planes, 64 pixels per word operation; ``_moments._accumulate`` counts them per object."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from nucleiscreen.kernels._bits import _0, _1, _63, _u


class Planes(NamedTuple):
    """Bit planes for the perimeter, reused by one thread (``planes(h, w)``): rows of ``nw = w // 64 + 1`` words (at
    least one always-zero column), image row y at plane row y + 2, two rows of zeros above and below.

    The "same object" planes have bit x set where pixel x and a neighbour are both foreground and of one object;
    ``_weight_planes`` says how each is made.
    """

    shape: tuple[int, int]
    nw: int
    foreground: np.ndarray
    same_right: np.ndarray  # the pixel and its right neighbour
    same_below: np.ndarray  # the pixel and the one below
    same_below_right: np.ndarray  # the pixel and the one below right
    same_right_below: np.ndarray  # the right neighbour and the pixel below
    border: np.ndarray  # border pixels: a 4-neighbour outside the object
    weight_one: np.ndarray  # border pixels of weight 1
    weight_sqrt2: np.ndarray  # of weight sqrt 2
    weight_corner: np.ndarray  # of weight (1 + sqrt 2) / 2


def planes(h: int, w: int) -> Planes:
    """New ``Planes`` for h x w frames (one allocation)."""
    nw = w // 64 + 1
    return Planes((h, w), nw, *np.zeros((9, (h + 4) * nw), np.uint64))


@numba.njit(nogil=True, cache=True)
def _set_bits(plane, base, x0, x1, on):
    """Set (``on``) or clear bits x0..x1 of the plane row at ``base``."""
    all_bits = ~_0
    for k in range(x0 >> 6, (x1 >> 6) + 1):
        lo = max(x0 - 64 * k, 0)
        hi = min(x1 - 64 * k, 63)
        m = (all_bits >> np.uint64(63 - hi)) & (all_bits << np.uint64(lo))
        if on:
            plane[_u(base + k)] |= m
        else:
            plane[_u(base + k)] &= ~m


@numba.njit(nogil=True, cache=True, inline="always")
def _add4(a, b, c, d):
    """a + b + c + d, per bit of four uint64 words, as bit slices (bit 0, bit 1, bit 2 of the sum): a bit-sliced
    adder, 64 sums per word operation. (Inlined by numba, so the loop that calls it still vectorises.)"""
    x1 = a ^ b
    x2 = c ^ d
    c1 = a & b
    c2 = c & d
    c3 = x1 & x2
    return x1 ^ x2, c1 ^ c2 ^ c3, (c1 & c2) | (c3 & (c1 | c2))


@numba.njit(nogil=True, cache=True)
def _weight_planes(runs, touch, h, planes):
    """The border pixels of skimage's perimeter (``measure.py``'s docstring) of the objects ``runs``, in its three
    weight classes, as the bit planes ``planes.weight_one``, ``weight_sqrt2``, ``weight_corner``, 64 pixels per word
    operation.

    Planes (bit x of a row = pixel x): F foreground; "same object" relations Hs (pixel and its right neighbour), Vs
    (pixel and the one below), D1 (and the one below right), D2 (the right neighbour and the pixel below): the
    foreground's, with the pairs of touching runs of different objects cut out (looked for in the rows where
    ``touch`` says objects may touch). Border pixels E; then each one's border neighbours of the same object,
    counted with bit-sliced adders. (The word loops index with uint64: no negative-index checks, so they vectorise.)
    """
    fx0 = runs.x0
    fx1 = runs.x1
    fid = runs.ids
    frs = runs.starts
    nw = planes.nw
    f = planes.foreground
    hs = planes.same_right
    vs = planes.same_below
    d1 = planes.same_below_right
    d2 = planes.same_right_below
    e = planes.border
    w1 = planes.weight_one
    w2 = planes.weight_sqrt2
    w3 = planes.weight_corner
    unw = np.uint64(nw)
    lo = np.uint64(2 * nw)  # first word of image row 0
    hi = np.uint64((h + 2) * nw)  # one past the last word of image row h - 1
    f[:] = _0
    for y in range(h):
        base = (y + 2) * nw
        for r in range(frs[y], frs[y + 1]):
            _set_bits(f, base, fx0[r], fx1[r], True)
    for i in range(unw, hi):
        fi = f[i]
        fr = (fi >> _1) | (f[i + _1] << _63)  # right neighbour
        fd = f[i + unw]  # below
        hs[i] = fi & fr
        vs[i] = fi & fd
        d1[i] = fi & ((fd >> _1) | (f[i + unw + _1] << _63))
        d2[i] = fr & fd
    # cut the relations between touching runs of different objects
    for y in range(h):
        if not touch[y]:
            continue
        base = (y + 2) * nw
        for r in range(frs[y], frs[y + 1] - 1):
            if fx1[r] + 1 == fx0[r + 1]:
                _set_bits(hs, base, fx1[r], fx1[r], False)
        if y + 1 == h or not touch[y + 1]:
            continue
        # every pair of 8-adjacent runs of rows y and y + 1 (runs of a row may touch, so no plain merge)
        j0 = frs[y + 1]
        for i in range(frs[y], frs[y + 1]):
            a0 = fx0[i]
            a1 = fx1[i]
            while j0 < frs[y + 2] and fx1[j0] < a0 - 1:
                j0 += 1
            j = j0
            while j < frs[y + 2] and fx0[j] <= a1 + 1:
                if fid[i] != fid[j]:
                    b0 = fx0[j]
                    b1 = fx1[j]
                    if max(a0, b0) <= min(a1, b1):
                        _set_bits(vs, base, max(a0, b0), min(a1, b1), False)
                    if max(a0, b0 - 1) <= min(a1, b1 - 1):
                        _set_bits(d1, base, max(a0, b0 - 1), min(a1, b1 - 1), False)
                    if max(a0 - 1, b0) <= min(a1 - 1, b1):
                        _set_bits(d2, base, max(a0 - 1, b0), min(a1 - 1, b1), False)
                j += 1
    for i in range(lo, hi):
        hsi = hs[i]
        e[i] = f[i] & ~(hsi & ((hsi << _1) | (hs[i - _1] >> _63)) & vs[i] & vs[i - unw])
    for i in range(lo, hi):
        ei = e[i]
        up = i - unw
        dn = i + unw
        # border neighbours of the same object: left, right, up, down; then up-left, down-right, up-right, down-left
        a = ((ei & hs[i]) << _1) | ((e[i - _1] & hs[i - _1]) >> _63)
        b = ((ei >> _1) | (e[i + _1] << _63)) & hs[i]
        c = e[up] & vs[up]
        d = e[dn] & vs[i]
        p = ((d1[up] & e[up]) << _1) | ((d1[up - _1] & e[up - _1]) >> _63)
        q = d1[i] & ((e[dn] >> _1) | (e[dn + _1] << _63))
        s = d2[up] & ((e[up] >> _1) | (e[up + _1] << _63))
        t = ((d2[i] & e[dn]) << _1) | ((d2[i - _1] & e[dn - _1]) >> _63)
        n0, n1, n2 = _add4(a, b, c, d)  # n4, the border neighbours of the same object in the 4 directions
        m0, m1, m2 = _add4(p, q, s, t)  # nd, those in the 4 diagonal directions
        four_1 = n0 & ~n1 & ~n2
        # weight 1: n4 in {2, 3}, nd <= 2; sqrt 2: (n4, nd) = (0, 2) or (1, 3); corner: n4 = 1, nd in {1, 2}
        w1[i] = ei & n1 & ~n2 & ~((m0 & m1) | m2)
        w2[i] = ei & ((~(n0 | n1 | n2) & ~m0 & m1 & ~m2) | (four_1 & m0 & m1))
        w3[i] = ei & four_1 & (m0 ^ m1) & ~m2
