"""A synthetic Hoechst screen that looks like the CellInsight CX7 frames of the real one, with ground truth.

Frames (``synth_frame``) are drawn at the CX7's 20x pixel size to match the annotated real data
(../shared/data/aitslab-bioimaging1): nuclei of median ~1,500 px, elongated and wobbly, textured chromatin, touching
neighbours, a dim cytoplasm glow around each nucleus (the Hoechst channel shows it), micronuclei and bright apoptotic
fragments (~14 % of real objects are under 100 px), a camera offset with vignetting, optical blur, shot and read
noise, all in 16-bit raw counts.

A screen (``simulate_screen``) is plates of 384 wells (A01-P24) with controls in the edge columns like the real
screen's (negative OTP, mock, untransfected; positive PLK1 and KIF11; LIPA), each gene in several wells (separate
siRNAs) spread over the plates, and planted phenotypes: FBXO5 and CCNA2 lower the nuclei count below 0.5x and enlarge
nuclei above 1.7x; UBB and POLR2A drop the count below 0.1x; PLK1/KIF11 strongly reduce it; other genes are neutral.
Every frame is seeded from (seed, plate, well, field) alone, so a screen is identical however it is generated.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import tifffile
from tqdm import tqdm

from nucleiscreen.cellomics import write_c01
from nucleiscreen.errors import UserError

PIXEL_SIZE_UM = 0.325 * 2  # CX7, 20x objective, 2x2 binning -> 1104 x 1104 frames (approximate)
FRAME_SIZE = 1104
MEDIAN_NUCLEUS_AREA = 1500.0
NUCLEI_PER_FRAME = 60.0  # negative-control density per full 1104^2 frame (real frames: 16-84, median 39)
ROWS = "ABCDEFGHIJKLMNOP"
COLUMNS = 24

# Planted phenotypes: gene -> (count multiplier, nucleus area multiplier).
PLANTED = {
    "FBXO5": (0.28, 2.3),
    "CCNA2": (0.30, 2.2),
    "UBB": (0.02, 1.0),
    "POLR2A": (0.025, 1.0),
}
# Marker phenotypes of a screen with more than one channel (MarkerSpec fields): lysosomal damage (LMP: many cells
# with many bright galectin puncta in d1), and a brighter cell-body stain (d2). LIPA, a control, has the first.
LYSO = {"puncta_positive": 0.7, "puncta_brightness": 1.4, "lyso_level": 1.8}
PLANTED_MARKERS = {"CTSD": LYSO, "LAMP2": LYSO, "RAC1": {"cell_stain": 1.8}}
CONTROL_MARKERS = {"LIPA": LYSO}
# Controls: (gene_symbol, role, count multiplier, area multiplier, wells per plate). They sit in columns 1 and 24.
CONTROLS = [
    ("OTP", "negative", 1.0, 1.0, 12),
    ("mock", "negative", 1.0, 1.0, 4),
    ("untransfected", "negative", 1.08, 1.0, 4),
    ("PLK1", "positive", 0.12, 1.3, 4),
    ("KIF11", "positive", 0.15, 1.25, 4),
    ("LIPA", "other", 0.85, 1.05, 4),
]


# --------------------------------------------------------------------------------------------------------- frames
@numba.njit(nogil=True, cache=True)
def _blur_rows(img, kernel, out):
    h, w = img.shape
    r = kernel.size // 2
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for k in range(kernel.size):
                xx = min(max(x + k - r, 0), w - 1)  # edges replicated
                acc += kernel[k] * img[y, xx]
            out[y, x] = acc


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur truncated at 3 sigma, edges replicated (numba; no scipy at run time)."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if sigma <= 0.3:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    tmp = np.empty_like(img)
    _blur_rows(img, kernel, tmp)
    out = np.empty(img.shape[::-1], np.float32)
    _blur_rows(np.ascontiguousarray(tmp.T), kernel, out)
    return np.ascontiguousarray(out.T)


@dataclass
class FrameSpec:
    """What to draw in one frame. Counts are expectations per full 1104^2 frame, scaled to the frame's size."""

    nuclei_per_frame: float = NUCLEI_PER_FRAME
    area_scale: float = 1.0
    micronuclei_fraction: float = 0.15
    brightness: float = 2600.0
    offset: float = 300.0
    blur_sigma: float = 1.1
    extra: dict = field(default_factory=dict)


def _place(rng, shape, radii, max_tries=40):
    """Centres for nuclei of the given radii: random, allowing touching but not heavy overlap."""
    h, w = shape
    centres = []
    placed_r = []
    for r in radii:
        for _ in range(max_tries):
            cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
            ok = True
            for (py, px), pr in zip(centres, placed_r):
                if (py - cy) ** 2 + (px - cx) ** 2 < (0.82 * (pr + r)) ** 2:
                    ok = False
                    break
            if ok:
                centres.append((cy, cx))
                placed_r.append(r)
                break
    return centres, placed_r


def _ellipse_window(shape, cy, cx, a, b, theta, reach):
    """The window of +-reach px around (cy, cx) clipped to the frame, and each pixel's coordinates (u, v) in the
    ellipse's frame scaled by its semi-axes a, b (u^2 + v^2 < 1 inside); None when the window is off the frame."""
    h, w = shape
    y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    return (y0, y1, x0, x1), (dx * c + dy * s) / a, (-dx * s + dy * c) / b


def synth_frame(
    rng: np.random.Generator, shape: tuple[int, int] = (FRAME_SIZE, FRAME_SIZE), spec: FrameSpec | None = None,
    cells: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one raw 16-bit Hoechst frame and its instance labels.

    Parameters
    ----------
    rng : numpy Generator
        The only source of randomness (seed it for a reproducible frame).
    shape : (H, W)
        Frame size in pixels at the CX7 20x pixel size.
    spec : FrameSpec
        Density, nucleus size multiplier, brightness, blur.
    cells : list, optional
        Filled with one ``Cell`` per nucleus (not the micronuclei): its label in ``labels`` and the cell body drawn
        around it (the cytoplasm glow of this channel), for ``synth_markers``. Drawing them takes no randomness, so the
        frame is the same with or without.

    Returns
    -------
    image : (H, W) uint16 raw counts
    labels : (H, W) uint16 instance ids 1..N (0 background), nuclei and micronuclei alike
    """
    spec = spec or FrameSpec()
    h, w = shape
    scale = (h * w) / float(FRAME_SIZE * FRAME_SIZE)
    n = rng.poisson(spec.nuclei_per_frame * scale)
    areas = MEDIAN_NUCLEUS_AREA * spec.area_scale * rng.lognormal(0.0, 0.3, n)
    n_micro = rng.binomial(max(n, 0) + 1, spec.micronuclei_fraction) if n else rng.binomial(1, 0.05)
    micro_areas = rng.uniform(12, 95, n_micro)

    # Nuclei and their aspect ratios; larger first so small ones fill the gaps.
    order = np.argsort(-areas)
    areas = areas[order]
    aspect = rng.uniform(1.0, 1.9, n)
    radii = np.sqrt(areas / np.pi) * np.sqrt(aspect)
    centres, _ = _place(rng, shape, radii)

    labels = np.zeros(shape, np.uint16)
    score = np.full(shape, np.inf, np.float32)  # the normalized radius of the owner: overlaps go to the nearer centre
    nucleus_signal = np.zeros(shape, np.float32)
    cyto = np.zeros(shape, np.float32)
    texture = gaussian_blur(rng.standard_normal(shape).astype(np.float32), 1.3)
    texture *= 0.28 / (texture.std() + 1e-6)
    label = 0

    def paint(cy, cx, area, ar, bright, wobble, is_micro) -> int:
        """The object's label (0: none drawn)."""
        nonlocal label
        a = np.sqrt(area * ar / np.pi)  # semi-major
        b = np.sqrt(area / ar / np.pi)
        win = _ellipse_window(shape, cy, cx, a, b, rng.uniform(0, np.pi), int(np.ceil(a * 1.25)) + 2)
        if win is None:
            return 0
        (y0, y1, x0, x1), u, v = win
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        edge = np.ones_like(phi)
        for k, amp in zip((2, 3, 4, 5), wobble):
            edge += amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        rel = rho / edge
        inside = rel < 1.0
        if not inside.any():
            return 0
        mine = inside & (rel < score[y0:y1, x0:x1])
        label += 1
        labels[y0:y1, x0:x1][mine] = label
        score[y0:y1, x0:x1][mine] = rel[mine]
        dome = np.sqrt(np.clip(1.0 - rel**4, 0.0, 1.0))
        if is_micro:
            sig = bright * dome
        else:
            sig = bright * dome * (1.0 + texture[y0:y1, x0:x1])
        nucleus_signal[y0:y1, x0:x1] = np.where(mine, sig, nucleus_signal[y0:y1, x0:x1])
        return label

    nuclei = []
    for (cy, cx), area, ar in zip(centres, areas, aspect):
        bright = spec.brightness * rng.lognormal(0.0, 0.22)
        if rng.random() < 0.03:  # condensed (mitotic / pre-apoptotic) nucleus: small and bright
            area *= 0.5
            bright *= 1.8
        wobble = rng.normal(0.0, [0.05, 0.035, 0.02, 0.015])
        nuclei.append((cy, cx, area, bright, paint(cy, cx, area, ar, bright, wobble, False)))

    # Cytoplasm glow: a larger, smooth, elongated body around each nucleus, offset from it (the cell body).
    bodies = []
    for cy, cx, area, bright, own in nuclei:
        r = np.sqrt(area / np.pi) * rng.uniform(1.9, 2.9)
        ar = rng.uniform(1.2, 2.6)
        theta = rng.uniform(0, np.pi)
        ocy = cy + rng.normal(0, 0.3 * r)
        ocx = cx + rng.normal(0, 0.3 * r)
        a, b = r * np.sqrt(ar), r / np.sqrt(ar)
        bodies.append((own, ocy, ocx, a, b, theta))
        win = _ellipse_window(shape, ocy, ocx, a, b, theta, int(a * 1.6) + 2)
        if win is None:
            continue
        (y0, y1, x0, x1), u, v = win
        q = u**2 + v**2
        cyto[y0:y1, x0:x1] += bright * rng.uniform(0.15, 0.4) * np.exp(-(q**2))

    # Micronuclei and fragments: near a nucleus when there is one, small and often very bright.
    for _ in range(n_micro):
        area = float(micro_areas[_])
        if nuclei and rng.random() < 0.8:
            cy, cx, parea, _b, _own = nuclei[rng.integers(len(nuclei))]
            d = np.sqrt(parea / np.pi) * rng.uniform(1.05, 1.8)
            ang = rng.uniform(0, 2 * np.pi)
            my, mx = cy + d * np.sin(ang), cx + d * np.cos(ang)
        else:
            my, mx = rng.uniform(0, h), rng.uniform(0, w)
        bright = spec.brightness * rng.choice([0.8, 1.5, 2.8], p=[0.45, 0.3, 0.25]) * rng.lognormal(0, 0.2)
        paint(my, mx, area, rng.uniform(1.0, 1.5), bright, rng.normal(0, [0.03, 0.02, 0.0, 0.0]), True)

    cyto = gaussian_blur(cyto, 4.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - 0.12 * (((yy - h / 2) / FRAME_SIZE) ** 2 + ((xx - w / 2) / FRAME_SIZE) ** 2) * 4
    sigma = spec.blur_sigma * rng.uniform(0.85, 1.25)
    if rng.random() < 0.02:  # the occasional soft frame
        sigma *= 2.0
    photons = gaussian_blur((nucleus_signal + cyto) * vignette, sigma) + 40.0 * vignette
    photons = np.clip(photons, 0, None)
    gain = 2.0  # counts per photo-electron
    counts = rng.poisson(photons / gain).astype(np.float32) * gain
    counts += spec.offset + rng.normal(0.0, 6.0, shape).astype(np.float32)
    image = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    lut = _relabelling(labels)
    if cells is not None:
        cells.extend(Cell(int(lut[own]), *body) for own, *body in bodies if own and lut[own])
    return image, lut[labels]


def _relabelling(labels: np.ndarray) -> np.ndarray:
    """The look-up table to consecutive ids 1..N, dropping ids whose pixels were all taken by later, nearer
    objects."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    return lut


@dataclass(frozen=True)
class Cell:
    """A cell of a simulated field: its nucleus's label and its body, an ellipse (centre, semi-axes, angle)."""

    nucleus: int
    cy: float
    cx: float
    a: float
    b: float
    theta: float


@dataclass(frozen=True)
class MarkerSpec:
    """The other two stains of a field (``synth_markers``): d1, a lysosome/galectin-like marker (a dim diffuse
    stain of the whole cell and bright puncta in the cytoplasm), and d2, a cell-body stain; both with a stronger
    vignetting than the Hoechst channel's (``vignetting``: the fall-off at the frame's corners)."""

    puncta_positive: float = 0.08  # fraction of cells with many puncta (lysosomal damage: galectin puncta, LMP)
    puncta_low: float = 2.0  # mean puncta of a cell that is not positive, ...
    puncta_high: float = 14.0  # ... and of a positive one
    puncta_brightness: float = 1.0  # x the puncta's usual brightness
    lyso_level: float = 1.0  # x the diffuse d1 stain (galectin released into the cytosol)
    cell_stain: float = 1.0  # x the cell-body stain's brightness
    lyso_brightness: float = 900.0
    cell_brightness: float = 1800.0
    vignetting: float = 0.3
    offset: float = 300.0


@dataclass
class FieldMarkers:
    """The marker channels of a field and their truth: ``lyso`` (d1) and ``cell`` (d2) uint16 frames, the cells'
    labels (each cell has its nucleus's label; a cell holds its nucleus), and the puncta as rows (y, x, cell)."""

    lyso: np.ndarray
    cell: np.ndarray
    cells: np.ndarray
    puncta: np.ndarray


def cell_labels(shape: tuple[int, int], nuclei: np.ndarray, cells: list[Cell]) -> tuple[np.ndarray, np.ndarray]:
    """The cells' labels (a pixel of several bodies goes to the one whose ellipse it is deepest in; a nucleus's
    pixels to its own cell) and, per pixel, how close the second-nearest body is (0: a boundary between two cells,
    1: no other body near), for the dim line a cell-body stain shows where cells meet."""
    best = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint16)
    for c in cells:
        win = _ellipse_window(shape, c.cy, c.cx, c.a, c.b, c.theta, int(c.a) + 2)
        if win is None:
            continue
        (y0, y1, x0, x1), u, v = win
        q = u * u + v * v
        b, s2, lab = best[y0:y1, x0:x1], second[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        inside = q < 1.0
        nearer = inside & (q < b)
        s2[nearer] = b[nearer]
        s2[inside & ~nearer] = np.minimum(s2[inside & ~nearer], q[inside & ~nearer])
        b[nearer] = q[nearer]
        lab[nearer] = c.nucleus
    own = np.zeros(int(nuclei.max(initial=0)) + 1, np.uint16)
    own[[c.nucleus for c in cells]] = [c.nucleus for c in cells]
    held = own[nuclei] > 0
    labels[held] = nuclei[held]  # a cell holds its whole nucleus
    gap = np.where(np.isfinite(second), second - np.where(np.isfinite(best), best, 0.0), 1.0)
    return labels, np.clip(gap / 0.08, 0.0, 1.0)


def synth_markers(rng: np.random.Generator, nuclei: np.ndarray, cells: list[Cell],
                  spec: MarkerSpec = MarkerSpec()) -> FieldMarkers:
    """Draw the marker channels of a field whose Hoechst frame ``synth_frame`` drew (``nuclei``: its labels,
    ``cells``: what it recorded), after it from the same ``rng`` so that the Hoechst frame is the same with or
    without them. d1: a dim diffuse cytoplasm and, in each cell's cytoplasm, Poisson(``puncta_low``) puncta, or
    Poisson(``puncta_high``) in the ``puncta_positive`` share of cells; puncta are Gaussian spots (sigma 1.2 px) at
    least 5 px apart. d2: each cell a dome of stain, dimmer over its nucleus and along the lines where cells meet."""
    shape = nuclei.shape
    h, w = shape
    labels, apart = cell_labels(shape, nuclei, cells)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - spec.vignetting * (((yy - h / 2) / FRAME_SIZE) ** 2 + ((xx - w / 2) / FRAME_SIZE) ** 2) * 2
    cyto = (labels > 0) & (nuclei == 0)
    spots = np.zeros(shape, np.float32)
    diffuse = np.zeros(shape, np.float32)
    dome = np.zeros(shape, np.float32)
    puncta = []
    flat_labels = labels.ravel()
    order = np.argsort(flat_labels, kind="stable")
    bounds = np.searchsorted(flat_labels[order], np.arange(int(labels.max(initial=0)) + 2))
    for c in cells:
        pixels = order[bounds[c.nucleus]:bounds[c.nucleus + 1]]
        if pixels.size == 0:
            continue
        ys, xs = pixels // w, pixels % w
        bright = spec.cell_brightness * spec.cell_stain * rng.lognormal(0.0, 0.15)
        q = (((xs - c.cx) * np.cos(c.theta) + (ys - c.cy) * np.sin(c.theta)) / c.a) ** 2 + \
            ((-(xs - c.cx) * np.sin(c.theta) + (ys - c.cy) * np.cos(c.theta)) / c.b) ** 2
        dome[ys, xs] = bright * (0.45 + 0.55 * np.sqrt(np.clip(1.0 - q, 0.0, 1.0)))
        diffuse[ys, xs] = spec.lyso_brightness * 0.25 * spec.lyso_level * rng.lognormal(0.0, 0.15)
        free = pixels[cyto.ravel()[pixels]]
        mean = spec.puncta_high if rng.random() < spec.puncta_positive else spec.puncta_low
        n = rng.poisson(mean)
        placed: list[tuple[float, float]] = []
        for _ in range(4 * n):
            if len(placed) == n or free.size == 0:
                break
            k = int(free[rng.integers(free.size)])
            py, px = k // w + rng.uniform(-0.5, 0.5), k % w + rng.uniform(-0.5, 0.5)
            if all((py - qy) ** 2 + (px - qx) ** 2 >= 25.0 for qy, qx in placed):
                placed.append((py, px))
        for py, px in placed:
            amp = spec.lyso_brightness * spec.puncta_brightness * rng.lognormal(0.0, 0.25) * 2 * np.pi * 1.2**2 * 3
            spots[min(h - 1, max(0, round(py))), min(w - 1, max(0, round(px)))] += amp
            puncta.append((py, px, c.nucleus))
    dome *= np.where(nuclei > 0, 0.75, 1.0) * (0.55 + 0.45 * apart)
    lyso = diffuse + gaussian_blur(spots, 1.2)
    frames = []
    for signal in (lyso, dome):
        photons = np.clip(gaussian_blur(signal * vignette, 1.0) + 30.0 * vignette, 0, None)
        counts = rng.poisson(photons / 2.0).astype(np.float32) * 2.0
        counts += spec.offset + rng.normal(0.0, 6.0, shape).astype(np.float32)
        frames.append(np.clip(np.rint(counts), 0, 65535).astype(np.uint16))
    return FieldMarkers(frames[0], frames[1], labels, np.array(puncta, np.float64).reshape(-1, 3))


# -------------------------------------------------------------------------------------------------------- screens
@dataclass
class WellPlan:
    plate: str
    well: str
    gene_symbol: str
    role: str
    sirna_id: str
    count_multiplier: float
    area_multiplier: float
    markers: dict = field(default_factory=dict)  # MarkerSpec fields of its marker phenotype (none: {})


def well_names() -> list[str]:
    return [f"{r}{c:02d}" for r in ROWS for c in range(1, COLUMNS + 1)]


def plan_screen(plates: int = 4, wells_per_gene: int = 3, seed: int = 0, markers: bool = False) -> list[WellPlan]:
    """Assign genes, controls and planted phenotypes to the wells of ``plates`` 384-well plates; ``markers``: also
    the marker phenotypes (``PLANTED_MARKERS``, LIPA's), for a screen with marker channels."""
    if plates < 1:
        raise UserError("--plates must be at least 1")
    if wells_per_gene < 1:
        raise UserError("--wells-per-gene must be at least 1")
    rng = np.random.default_rng([seed, 7])
    names = [plate_name(i) for i in range(plates)]
    control_wells = [f"{r}{c:02d}" for c in (1, COLUMNS) for r in ROWS]
    sample_wells = [w for w in well_names() if w not in set(control_wells)]
    plan: list[WellPlan] = []
    for plate in names:
        i = 0
        for gene, role, cm, am, k in CONTROLS:
            for j in range(k):
                plan.append(WellPlan(plate, control_wells[i], gene, role, f"{gene}-{j + 1}", cm, am,
                                     CONTROL_MARKERS.get(gene, {}) if markers else {}))
                i += 1
    slots = [(p, w) for p in names for w in sample_wells]
    n_genes = len(slots) // wells_per_gene
    if n_genes < len(PLANTED) + (len(PLANTED_MARKERS) if markers else 0):
        raise UserError(f"{plates} plate(s) with {wells_per_gene} wells per gene leave no room for the planted genes")
    planted = [*PLANTED, *(PLANTED_MARKERS if markers else ())]
    genes = planted + [f"SIMG{i:05d}" for i in range(1, n_genes - len(planted) + 1)]
    # Deal each gene's siRNAs over different plates: siRNA j of gene g goes to slot g + j * n_genes, after a shuffle
    # of the slots within each plate so planted genes land in random wells.
    order = np.concatenate([rng.permutation(len(sample_wells)) + k * len(sample_wells) for k in range(plates)])
    slots = [slots[i] for i in order]
    for g, gene in enumerate(genes):
        for j in range(wells_per_gene):
            plate, well = slots[(g + j * n_genes) % len(slots)]
            cm, am = PLANTED.get(gene, (1.0, 1.0))
            if gene not in PLANTED:  # siRNA-to-siRNA variation of neutral genes
                cm *= float(rng.lognormal(0.0, 0.1))
                am *= float(rng.lognormal(0.0, 0.04))
            plan.append(WellPlan(plate, well, gene, "sample", f"{gene}-{j + 1}", cm, am,
                                 PLANTED_MARKERS.get(gene, {}) if markers else {}))
    used = {(p.plate, p.well) for p in plan}
    for plate in names:
        for well in well_names():
            if (plate, well) not in used:
                plan.append(WellPlan(plate, well, "", "empty", "", 0.0, 1.0))
    plan.sort(key=lambda p: (p.plate, p.well))
    return plan


def plate_name(i: int) -> str:
    """Plate names in the CX7 style of the real screen (``MFGTMPcx7_170702000001``)."""
    return f"SIMcx7_{261124000001 + i:012d}"


def frame_file_name(plate: str, well: str, field: int, channel: int, fmt: str) -> str:
    ext = {"tif": "tif", "c01": "C01"}[fmt]
    return f"{plate}_{well}f{field:02d}d{channel}.{ext}"


@dataclass
class SimulatedScreen:
    root: Path
    images: Path
    masks: Path | None
    layout: Path
    truth: Path
    frames: int


def simulate_screen(
    out: str | Path,
    plates: int = 4,
    fields: int = 4,
    size: int = FRAME_SIZE,
    fmt: str = "tif",
    seed: int = 0,
    wells_per_gene: int = 3,
    masks: bool = True,
    channels: int = 1,
    workers: int | None = None,
    progress: bool = False,
) -> SimulatedScreen:
    """Write a synthetic screen: frames, ground-truth masks, a layout file and the planted truth.

    Output: ``out/images/<plate>/<plate>_<well>f<field>d<channel>.(tif|C01)``, ``out/masks/<plate>/<stem>.tif``
    (uint16 instance labels of the Hoechst channel d0), ``out/layout.csv`` (the layout-file interface) and
    ``out/truth.csv`` (each well's planted count and area multipliers, and marker phenotype). With ``channels`` 2 or
    3, d1 is a lysosome/galectin-like punctate marker and d2 a cell-body stain (``synth_markers``), with the marker
    phenotypes planted (``PLANTED_MARKERS``, LIPA's); the masks then include each field's cell labels
    (``<stem>_cells.tif``) and ``out/puncta.parquet`` every punctum (plate, well, field, y, x, cell).
    """
    fmt = fmt.lower()
    if fmt not in ("tif", "c01"):
        raise UserError(f"unknown --format {fmt!r}: use tif or c01")
    if size < 64:
        raise UserError(f"--size {size} is too small: frames must be at least 64 px")
    if fields < 1:
        raise UserError("--fields must be at least 1")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"output folder {root} is not empty: choose a new folder")
    if not 1 <= channels <= 3:
        raise UserError(f"--channels {channels}: the simulator draws 1 (Hoechst), 2 (+ a punctate marker) or 3 "
                        "(+ a cell-body stain) channels")
    plan = plan_screen(plates, wells_per_gene, seed, markers=channels > 1)
    images, mask_dir = root / "images", root / "masks"
    for plate in sorted({p.plate for p in plan}):
        (images / plate).mkdir(parents=True, exist_ok=True)
        if masks:
            (mask_dir / plate).mkdir(parents=True, exist_ok=True)

    plate_index = {p: i for i, p in enumerate(sorted({q.plate for q in plan}))}
    plate_effect = {p: float(np.random.default_rng([seed, 11, i]).lognormal(0, 0.06)) for p, i in plate_index.items()}
    well_index = {w: i for i, w in enumerate(well_names())}

    def make(job):
        wp, fieldno = job
        rng = np.random.default_rng([seed, plate_index[wp.plate], well_index[wp.well], fieldno])
        spec = FrameSpec(
            nuclei_per_frame=NUCLEI_PER_FRAME * wp.count_multiplier * plate_effect[wp.plate],
            area_scale=wp.area_multiplier,
        )
        cells = [] if channels > 1 else None
        img, lab = synth_frame(rng, (size, size), spec, cells)
        name = frame_file_name(wp.plate, wp.well, fieldno, 0, fmt)
        _write_frame(images / wp.plate / name, img, fmt)
        if masks:
            tifffile.imwrite(mask_dir / wp.plate / (Path(name).stem + ".tif"), lab, compression="zlib")
        if channels == 1:
            return None
        drawn = synth_markers(rng, lab, cells, MarkerSpec(**wp.markers))
        for ch, frame in zip(range(1, channels), (drawn.lyso, drawn.cell)):
            _write_frame(images / wp.plate / frame_file_name(wp.plate, wp.well, fieldno, ch, fmt), frame, fmt)
        if masks:
            tifffile.imwrite(mask_dir / wp.plate / (Path(name).stem + "_cells.tif"), drawn.cells, compression="zlib")
        return wp.plate, wp.well, fieldno, drawn.puncta

    jobs = [(wp, f) for wp in plan for f in range(fields)]
    workers = workers or min(8, os.cpu_count() or 1)
    puncta = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(jobs), unit="frame", desc="simulate",
                                                   disable=not progress) as bar:
        for done in pool.map(make, jobs):
            if done is not None:
                puncta.append(done)
            bar.update()
    if puncta and masks:
        _write_puncta(root / "puncta.parquet", puncta)
    # Written last: a layout file means the screen is complete (the demo reuses a complete one).
    _write_truth(root / "truth.csv", plan)
    _write_layout(root / "layout.csv", plan)
    return SimulatedScreen(root, images, mask_dir if masks else None, root / "layout.csv", root / "truth.csv",
                           len(jobs))


def _write_frame(path: Path, img: np.ndarray, fmt: str) -> None:
    if fmt == "c01":
        write_c01(path, img, pixel_size_um=PIXEL_SIZE_UM)
    else:
        tifffile.imwrite(path, img)


def _write_layout(path: Path, plan: list[WellPlan]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["plate", "well", "gene_symbol", "role", "sirna_id", "control_name"])
        for p in plan:
            control = p.gene_symbol if p.role in ("negative", "positive", "other") else ""
            wr.writerow([p.plate, p.well, p.gene_symbol, p.role, p.sirna_id, control])


def _write_truth(path: Path, plan: list[WellPlan]) -> None:
    markers = any(p.markers for p in plan)
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["plate", "well", "gene_symbol", "role", "count_multiplier", "area_multiplier", "planted",
                     *(["puncta_positive", "cell_stain", "planted_marker"] if markers else [])])
        for p in plan:
            row = [p.plate, p.well, p.gene_symbol, p.role, f"{p.count_multiplier:.4f}", f"{p.area_multiplier:.4f}",
                   int(p.gene_symbol in PLANTED)]
            if markers:
                spec = MarkerSpec(**p.markers)
                kind = "lyso" if "puncta_positive" in p.markers else "cell" if p.markers else ""
                row += [f"{spec.puncta_positive:.4f}", f"{spec.cell_stain:.4f}", kind]
            wr.writerow(row)


def _write_puncta(path: Path, fields: list[tuple[str, str, int, np.ndarray]]) -> None:
    """Every punctum of the screen: plate, well, field, y, x (px, sub-pixel) and the cell (its nucleus's label)."""
    import polars as pl

    tables = [pl.DataFrame({"plate": [plate] * len(p), "well": [well] * len(p), "field": [f] * len(p),
                            "y": p[:, 0], "x": p[:, 1], "cell": p[:, 2].astype(np.int64)},
                           schema={"plate": pl.String, "well": pl.String, "field": pl.Int64, "y": pl.Float64,
                                   "x": pl.Float64, "cell": pl.Int64})
              for plate, well, f, p in fields]
    pl.concat(tables).sort("plate", "well", "field").write_parquet(path)
