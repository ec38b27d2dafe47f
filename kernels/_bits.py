"""Bits: 64 pixels to a uint64 word, masks and class maps as bit planes.

A bit plane holds one bit per pixel in ``nw = w // 64 + 1`` words per row (so at least one always-zero column on the
right: a shift never carries a pixel into the next row), with rows 0 and h + 1 of zeros above and below; pixel
(y, x) is bit x % 64 of word (y + 1) * nw + x // 64.

Hot loops index arrays with uint64 (``_u``): numba checks every signed index for a negative value, which costs a
branch and keeps LLVM from vectorising.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

# uint64 constants: numba turns uint64 (op) int64 into float64, so every bit operation uses these.
_0 = np.uint64(0)
_1 = np.uint64(1)
_56 = np.uint64(56)
_63 = np.uint64(63)
_LOW_BITS = np.uint64(0x0101010101010101)  # bit 0 of every byte
_HIGH_BITS = np.uint64(0xFCFCFCFCFCFCFCFC)  # bits 2..7 of every byte
# (bytes & _LOW_BITS) * _PACK >> 56 gathers bit 0 of byte j into bit j: the 8 products land on distinct bits.
_PACK = np.uint64(0x0102040810204080)
_u = np.uint64  # array indices in hot loops: no negative-index check (module docstring)


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of a uint64 (LLVM ctpop)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


def _as_words(image: np.ndarray) -> tuple[np.ndarray, int]:
    """A uint8 image as uint64 words, row by row (``cw`` words per row), copying only when rows are not whole words."""
    h, w = image.shape
    if not (image.flags.c_contiguous and w % 8 == 0):
        padded = np.zeros((h, (w + 7) // 8 * 8), np.uint8)
        padded[:, :w] = image
        image = padded
    return image.reshape(-1).view(np.uint64), image.shape[1] // 8


@numba.njit(nogil=True, cache=True)
def _pack_classes(cls64, h, cw, nw, ip, bp):
    """Bit planes of the interior (1) and boundary (2) bytes of a class map given as uint64 words, ``cw`` per row.

    Returns True if a byte > 2 occurs.
    """
    ip8 = ip.view(np.uint8)
    bp8 = bp.view(np.uint8)
    bad = _0
    for y in range(h):
        src = y * cw
        dst = (y + 1) * nw * 8
        for c in range(cw):
            v = cls64[_u(src + c)]
            hi = v >> _1
            bad |= (v & _HIGH_BITS) | (v & hi & _LOW_BITS)
            ip8[_u(dst + c)] = np.uint8(((v & ~hi & _LOW_BITS) * _PACK) >> _56)
            bp8[_u(dst + c)] = np.uint8(((hi & ~v & _LOW_BITS) * _PACK) >> _56)
    return bad != _0


@numba.njit(nogil=True, cache=True)
def _pack_nonzero_bytes(m64, h, cw, nw, ip):
    """Bit plane of the nonzero bytes of a uint8 mask given as uint64 words, ``cw`` per row."""
    ip8 = ip.view(np.uint8)
    four = np.uint64(4)
    two = np.uint64(2)
    for y in range(h):
        src = y * cw
        dst = (y + 1) * nw * 8
        for c in range(cw):
            v = m64[_u(src + c)]
            v |= v >> four
            v |= v >> two
            v |= v >> _1
            ip8[_u(dst + c)] = np.uint8(((v & _LOW_BITS) * _PACK) >> _56)


@numba.njit(nogil=True, cache=True)
def _pack_nonzero(mask, nw, ip):
    """Bit plane of the nonzero pixels of a 2-D array of any layout and dtype."""
    h, w = mask.shape
    for y in range(h):
        base = (y + 1) * nw
        for k in range(nw):
            ip[base + k] = _0
        for x in range(w):
            if mask[y, x] != 0:
                ip[base + (x >> 6)] |= _1 << np.uint64(x & 63)


@numba.njit(nogil=True, cache=True)
def _dilate_row(src, base, nw, eight, out):
    """out[k] = word k of the dilation of plane ``src`` (by the 3 x 3 square, or the cross) at the row at ``base``."""
    up = base - nw
    dn = base + nw
    prev = _0
    if eight:
        cur = src[_u(up)] | src[_u(base)] | src[_u(dn)]
    else:
        cur = src[_u(base)]
    for k in range(nw):
        nxt = _0
        if k + 1 < nw:
            if eight:
                nxt = src[_u(up + k + 1)] | src[_u(base + k + 1)] | src[_u(dn + k + 1)]
            else:
                nxt = src[_u(base + k + 1)]
        d = cur | (cur << _1) | (prev >> _63) | (cur >> _1) | (nxt << _63)
        if not eight:
            d |= src[_u(up + k)] | src[_u(dn + k)]
        out[_u(k)] = d
        prev = cur
        cur = nxt
