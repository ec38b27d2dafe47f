"""Fuzz tests (hypothesis): broken files into the frame readers, random arrays into the kernels.

Readers: whatever the bytes, ``read_frame`` returns a 2-D array or raises ``FrameReadError`` with one line that starts
with the path; never another exception, a MemoryError or a hang. A frame it returns has the shape its header claims,
and a file cut short or with bytes appended reads as the original frame or not at all (never as zero-filled pixels).

Kernels: inputs of every size from empty and 1x1 up (past the 64-pixel words of the bit planes), uint8/uint16/float32
with all-zero, all-maximum and NaN/infinite frames; they raise only the documented ValueError and keep their promises
(output shapes, [0, 1] after normalization, ids 1..N in raster order, tables that agree with the label image).

Few examples and ``derandomize`` (the same examples on every run, so CI is deterministic and a failure reproduces):
the whole file takes well under a minute on two cores. Raise ``max_examples`` locally to fuzz harder.
"""

import io
import struct
import zlib

import imagecodecs
import numpy as np
import polars as pl
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi

from nucleiscreen.engine.readers import FrameReadError, _plain_tiff, read_frame
from nucleiscreen.kernels.contrast import filter_faint
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import (
    measure,
    segment_and_measure,
    segment_and_summarize,
    summarize_frame,
    summarize_objects,
)
from nucleiscreen.kernels.normalize import histogram, normalization_range, normalize
from nucleiscreen.kernels.quality import frame_quality, quality_columns
from nucleiscreen.kernels.runs import connected_components


def fuzz(examples: int, deadline: int | None = None) -> settings:
    """``deadline`` (ms): the readers' 10 s turns a hang into a failure; None for the kernels, whose first call compiles
    or loads a numba function. No database: nothing is written to disk."""
    return settings(
        max_examples=examples,
        deadline=deadline,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- readers -----------------------------------------------------------------------------------------------------

# Odd sizes, and no zero byte in the pixels: however a (mutated) header makes a reader take them (8, 16 or 32 bits,
# either byte order), a zero pixel in a frame read from a TIFF or Cellomics file was not in the file.
_rng = np.random.default_rng(0)
IMAGE = (_rng.integers(1, 256, (13, 21)) * 256 + _rng.integers(1, 256, (13, 21))).astype(np.uint16)


def tiff_bytes(**options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, IMAGE, **options)
    return buffer.getvalue()


def dib_bytes(image: np.ndarray = IMAGE) -> bytes:
    """A single-plane uint16 DIB from the documented layout (module docstring of engine/readers/cellomics.py)."""
    header = bytearray(52)
    struct.pack_into("<iiihhi", header, 0, 52, image.shape[1], image.shape[0], 1, 16, 0)
    struct.pack_into("<i", header, 20, image.nbytes)
    return bytes(header) + image.astype("<u2").tobytes()


def c01_bytes(dib: bytes) -> bytes:
    return (16).to_bytes(4, "big") + zlib.compress(dib)


ORIGINALS = {
    "plain.tif": tiff_bytes(),  # uncompressed, one strip: the engine's own fast path
    "deflate.tif": tiff_bytes(compression="zlib", rowsperstrip=4),  # 4 compressed strips: tifffile
    "zstd.tif": tiff_bytes(compression="zstd"),  # one compressed strip
    "frame.png": imagecodecs.png_encode(IMAGE),
    "frame.C01": c01_bytes(dib_bytes()),
    "frame.dib": dib_bytes(),
}


TIFF_SHAPE_TAGS = (256, 257, 258, 277, 278)  # ImageWidth, ImageLength, BitsPerSample, SamplesPerPixel, RowsPerStrip


def tiff_fields(content: bytes, codes: tuple[int, ...]) -> list[tuple[int, str]]:
    """(offset, struct format) of the values of the first IFD's tags ``codes``."""
    order = "<" if content[:2] == b"II" else ">"
    with tifffile.TiffFile(io.BytesIO(content)) as tif:
        tags = [tag for tag in tif.pages.first.tags.values() if tag.code in codes]
    return [
        (t.valueoffset + 2 * i, order + "H") if t.dtype == 3 else (t.valueoffset + 4 * i, order + "I")
        for t in tags
        for i in range(t.count)
    ]


def tiff_entry_fields(content: bytes) -> list[tuple[int, str]]:
    """The first IFD's offset and entry count, and each entry's type and count."""
    order = "<" if content[:2] == b"II" else ">"
    with tifffile.TiffFile(io.BytesIO(content)) as tif:
        tags = list(tif.pages.first.tags.values())
    return [(4, order + "I"), (8, order + "H")] + [
        (t.offset + k, order + f) for t in tags for k, f in ((2, "H"), (4, "I"))
    ]


# The header's integers that say what the pixels are (shape, bits, samples, strips): changing them leaves the pixel
# data where it is.
SHAPE_FIELDS = {
    "plain.tif": tiff_fields(ORIGINALS["plain.tif"], TIFF_SHAPE_TAGS),
    "deflate.tif": tiff_fields(ORIGINALS["deflate.tif"], TIFF_SHAPE_TAGS),
    "zstd.tif": tiff_fields(ORIGINALS["zstd.tif"], TIFF_SHAPE_TAGS),
    "frame.png": [(16, ">I"), (20, ">I"), (24, "B"), (25, "B")],  # IHDR width, height, bit depth, colour type
    "frame.C01": [(4, "<i"), (8, "<i"), (12, "<h"), (14, "<h")],  # in the DIB (compressed again after)
    "frame.dib": [(4, "<i"), (8, "<i"), (12, "<h"), (14, "<h")],  # width, height, planes, bits
}
# ... and the others: where the pixels are, how they are compressed, where the tags are
OTHER_FIELDS = {
    "plain.tif": tiff_fields(ORIGINALS["plain.tif"], (259, 262, 273, 279, 284, 339))
    + tiff_entry_fields(ORIGINALS["plain.tif"]),
    "deflate.tif": tiff_fields(ORIGINALS["deflate.tif"], (259, 262, 273, 279, 284, 339))
    + tiff_entry_fields(ORIGINALS["deflate.tif"]),
    "zstd.tif": tiff_fields(ORIGINALS["zstd.tif"], (259, 262, 273, 279, 284, 339))
    + tiff_entry_fields(ORIGINALS["zstd.tif"]),
    "frame.png": [(26, "B"), (27, "B"), (28, "B")],  # IHDR compression, filter, interlace
    "frame.C01": [(16, "<i"), (20, "<i")],  # compression, pixel data length
    "frame.dib": [(16, "<i"), (20, "<i")],
}


READ_DEADLINE = 10_000  # ms; a frame of these files reads in about a millisecond


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_or_refuse(folder, name: str, content: bytes) -> np.ndarray | None:
    """read_frame of ``content`` saved as ``name``: the frame, or None when refused as the readers promise."""
    path = folder / name
    path.write_bytes(content)
    try:
        image = read_frame(path)
    except FrameReadError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return None
    assert isinstance(image, np.ndarray) and image.ndim == 2 and image.size > 0
    assert image.shape == claimed_shape(name, content) or claimed_shape(name, content) is None
    return image


def claimed_shape(name: str, content: bytes) -> tuple[int, int] | None:
    """(rows, columns) in the file's header, parsed here without the readers; None when it cannot be parsed."""
    suffix = name.rsplit(".", 1)[1].lower()
    try:
        if content.startswith(b"\x89PNG"):
            width, height = struct.unpack_from(">II", content, 16)
        elif content[:2] in (b"II", b"MM"):
            with tifffile.TiffFile(io.BytesIO(content)) as tif:
                return tif.pages.first.imagelength, tif.pages.first.imagewidth
        elif suffix == "c01":
            width, height = struct.unpack_from("<ii", zlib.decompressobj().decompress(content[4:], 12), 4)
        elif suffix == "dib":
            width, height = struct.unpack_from("<ii", content, 4)
        else:
            return None
    except Exception:  # whatever the parser's complaint: no claim
        return None
    return height, width


def bits_per_sample(content: bytes) -> int:
    if content[:2] not in (b"II", b"MM"):
        return 8
    with tifffile.TiffFile(io.BytesIO(content)) as tif:
        return tif.pages.first.bitspersample


def same_as_original(image: np.ndarray | None) -> bool:
    return image is None or (image.dtype == IMAGE.dtype and np.array_equal(image, IMAGE))


def test_originals_read_back(folder):
    for name, content in ORIGINALS.items():
        np.testing.assert_array_equal(read_or_refuse(folder, name, content), IMAGE)
    assert _plain_tiff(folder / "plain.tif") is not None  # the fuzzing below reaches both TIFF paths
    assert _plain_tiff(folder / "deflate.tif") is None


@pytest.mark.parametrize("name", [*ORIGINALS, "frame.tiff", "frame.PNG"])
@fuzz(60, READ_DEADLINE)
@given(
    content=st.binary(max_size=300),
    prefix=st.sampled_from(
        [b"", b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x10x\x9c", b"\xff\xd8\xff"]
    ),
)
def test_random_bytes(folder, name, content, prefix):
    read_or_refuse(folder, name, prefix + content)


@pytest.mark.parametrize("name", ORIGINALS)
@fuzz(60, READ_DEADLINE)
@given(edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255), st.booleans()), min_size=1, max_size=6))
def test_bytes_overwritten_or_flipped_in_the_first_64(folder, name, edits):
    content = bytearray(ORIGINALS[name])
    for position, value, flip in edits:
        content[position] = content[position] ^ (1 << value % 8) if flip else value
    read_or_refuse(folder, name, bytes(content))


@pytest.mark.parametrize("name", ORIGINALS)
@fuzz(40, READ_DEADLINE)
@given(data=st.data())
def test_truncated(folder, name, data):
    content = ORIGINALS[name]
    length = data.draw(st.integers(0, len(content) - 1))
    assert same_as_original(read_or_refuse(folder, name, content[:length]))


@pytest.mark.parametrize("name", ORIGINALS)
@fuzz(20, READ_DEADLINE)
@given(tail=st.binary(min_size=1, max_size=64))
def test_bytes_appended(folder, name, tail):
    assert same_as_original(read_or_refuse(folder, name, ORIGINALS[name] + tail))


RANGES = {
    "B": (0, 255),
    "H": (0, 2**16 - 1),
    "I": (0, 2**32 - 1),
    "h": (-(2**15), 2**15 - 1),
    "i": (-(2**31), 2**31 - 1),
}


def with_header_ints(name: str, data: st.DataObject, fields: list[tuple[int, str]]) -> bytes:
    """The original file with 1-4 of ``fields`` set to random values: small, huge or any."""
    content = bytearray(dib_bytes() if name == "frame.C01" else ORIGINALS[name])
    for offset, fmt in data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True)):
        lo, hi = RANGES[fmt[-1]]
        value = st.integers(max(lo, -2), min(hi, 70)) | st.integers(hi // 4, hi) | st.integers(lo, hi)
        struct.pack_into(fmt, content, offset, data.draw(value))
    if name == "frame.png":  # a valid checksum, so the PNG decoder looks at the header itself
        struct.pack_into(">I", content, 29, zlib.crc32(content[12:29]))
    return c01_bytes(bytes(content)) if name == "frame.C01" else bytes(content)


@pytest.mark.parametrize("name", ORIGINALS)
@fuzz(60, READ_DEADLINE)
@given(data=st.data())
def test_header_claims_another_shape(folder, name, data):
    content = with_header_ints(name, data, SHAPE_FIELDS[name])
    image = read_or_refuse(folder, name, content)
    # (PNG: a row's filter byte may become a pixel; TIFF of 1-7 bits per sample: a zero bit field is a zero pixel)
    if image is not None and name != "frame.png" and bits_per_sample(content) >= 8:
        assert image.all(), "pixels the file does not hold, filled with zeros"
        if image.shape == IMAGE.shape and name.endswith((".C01", ".dib")):
            # the pixel data is exactly what a 13x21 uint16 header describes: a frame of that shape is the original
            assert same_as_original(image)


@pytest.mark.parametrize("name", ORIGINALS)
@fuzz(40, READ_DEADLINE)
@given(data=st.data())
def test_header_ints_set_to_random_values(folder, name, data):
    read_or_refuse(folder, name, with_header_ints(name, data, SHAPE_FIELDS[name] + OTHER_FIELDS[name]))


# --- kernels: normalization and quality --------------------------------------------------------------------------

# rows, columns: empty, 1x1, odd sizes, over two 64-pixel words
SHAPES = st.tuples(st.integers(0, 40), st.integers(0, 140))


@st.composite
def frames(draw) -> np.ndarray:
    """A raw frame: uint8, uint16 or float32; noise of a random range, hypothesis's own arrays (runs of one value,
    extremes), all zero or all at the maximum; float frames sometimes with NaN and infinities sprinkled in."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "float32"])))
    shape = draw(SHAPES)
    kind = draw(st.sampled_from(["noise", "arrays", "zeros", "max"]))
    if 0 in shape:
        return np.zeros(shape, dtype)
    top = np.iinfo(dtype).max if dtype.kind == "u" else np.finfo(dtype).max
    if kind == "noise":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if dtype.kind == "u":
            low = draw(st.integers(0, int(top)))
            frame = rng.integers(low, draw(st.integers(low, int(top))), shape, dtype=dtype, endpoint=True)
        else:
            scale = 10.0 ** draw(st.integers(-40, 36))
            frame = (rng.normal(draw(st.floats(-3, 3)), 1.0, shape) * scale).astype(dtype)
    elif kind == "arrays":
        elements = st.integers(0, int(top)) if dtype.kind == "u" else st.floats(width=32, allow_nan=False)
        frame = draw(hnp.arrays(dtype, shape, elements=elements))
    else:
        frame = np.full(shape, 0 if kind == "zeros" else top, dtype)
    if dtype.kind == "f" and draw(st.booleans()):
        spots = draw(st.lists(st.tuples(st.integers(0, frame.size - 1), st.sampled_from([np.nan, np.inf, -np.inf]))))
        for index, value in spots:
            frame.flat[index] = value
    return frame


def finite(frame: np.ndarray) -> bool:
    return frame.dtype.kind != "f" or bool(np.isfinite(frame).all())


@fuzz(80)
@given(frame=frames())
def test_normalization(frame):
    if frame.size == 0:
        with pytest.raises(ValueError, match="an empty frame"):
            normalize(frame)
        return
    hist = histogram(frame)
    if frame.dtype in (np.uint8, np.uint16):
        assert hist.dtype == np.int64 and hist.size == np.iinfo(frame.dtype).max + 1
        np.testing.assert_array_equal(hist, np.bincount(frame.ravel(), minlength=hist.size))
    else:
        assert hist is None
    lo, scale = normalization_range(frame, hist=hist)
    out = normalize(frame, hist=hist)
    assert out.shape == frame.shape and out.dtype == np.float32
    half = normalize(frame, dtype=np.float16)
    assert half.shape == frame.shape and half.dtype == np.float16
    if finite(frame):  # the engine refuses the other frames before normalizing them (engine/segmenter.py: check)
        assert np.isfinite(lo) and np.isfinite(scale) and scale > 0
        assert ((out >= 0) & (out <= 1)).all() and ((half >= 0) & (half <= 1)).all()
        np.testing.assert_array_equal(normalize(frame), out)  # the histogram given or made inside: one result


@fuzz(80)
@given(frame=frames())
def test_frame_quality(frame):
    if frame.size == 0:
        with pytest.raises(ValueError, match="non-empty 2-D frame"):
            frame_quality(frame)
        return
    quality = frame_quality(frame)
    assert set(quality) == set(quality_columns("DNA"))
    if not finite(frame):  # the engine refuses these frames (engine/segmenter.py: check)
        return
    assert quality == frame_quality(frame, histogram(frame))
    focus, maximal = quality["ImageQuality_FocusScore_DNA"], quality["ImageQuality_PercentMaximal_DNA"]
    assert maximal == pytest.approx(100 * np.count_nonzero(frame == frame.max()) / frame.size, rel=1e-12)
    assert 0 < maximal <= 100 and focus >= 0
    if frame.dtype.kind == "u":  # the definition, from exact integer sums
        n, s, s2 = frame.size, int(frame.sum(dtype=np.int64)), int((frame.astype(np.int64) ** 2).sum())
        top = np.iinfo(frame.dtype).max
        expected = (s2 * n - s * s) / n**2 / (top * s / n) if s else 0.0
        # the kernel's var = s2 / n - mean^2 in float64 loses up to a few eps of s2 / n (nearly flat frames)
        slack = 8 * np.finfo(np.float64).eps * (s2 / n) / (top * s / n) if s else 0.0
        assert np.isfinite(focus) and focus == pytest.approx(expected, rel=1e-9, abs=slack)


# --- kernels: connected components, instances, measurements ------------------------------------------------------

STRUCTURE = {4: ndi.generate_binary_structure(2, 1), 8: ndi.generate_binary_structure(2, 2)}


@st.composite
def class_maps(draw, values: int = 3) -> np.ndarray:
    """A uint8 map of values 0..values-1: salt and pepper of random proportions, smooth blobs with bands (touching
    objects, holes, protrusions), or one value everywhere."""
    shape = draw(SHAPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["salt", "blobs", "constant"]))
    if 0 in shape:
        return np.zeros(shape, np.uint8)
    if kind == "salt":
        return rng.choice(values, size=shape, p=rng.dirichlet(np.ones(values))).astype(np.uint8)
    if kind == "blobs":  # low: background, middle: boundary, high: interior (and 3 on top when asked)
        field = ndi.gaussian_filter(rng.random(shape), draw(st.floats(0.5, 4)))
        edges = np.quantile(field, np.sort(rng.random(values - 1)))
        return np.array([0, 2, 1, 3], np.uint8)[np.searchsorted(edges, field)]
    return np.full(shape, draw(st.integers(0, values - 1)), np.uint8)


CONNECTIVITY = st.sampled_from([4, 8])


@fuzz(60)
@given(mask=class_maps(), dtype=st.sampled_from([np.bool_, np.uint8, np.uint16, np.int32]), connectivity=CONNECTIVITY)
def test_connected_components_equal_scipy(mask, dtype, connectivity):
    mask = mask.astype(dtype)
    labels = connected_components(mask, connectivity)
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    np.testing.assert_array_equal(labels, ndi.label(mask != 0, STRUCTURE[connectivity])[0])


def check_instances(labels: np.ndarray, class_map: np.ndarray, min_area: int) -> int:
    """The promises of instances_from_classes; returns the number of objects."""
    assert labels.dtype == np.int32 and labels.shape == class_map.shape
    if labels.size == 0:
        return 0
    ids, first, area = np.unique(labels, return_index=True, return_counts=True)
    n = int(ids[-1])
    assert list(ids[ids > 0]) == list(range(1, n + 1))  # 1..N, none missing
    assert (np.diff(first[ids > 0]) > 0).all()  # numbered in raster order of their first pixel
    assert (area[ids > 0] >= min_area).all()
    background = (class_map == 0) & (labels > 0)  # only holes, enclosed by their object, are filled
    assert not (background[0].any() or background[-1].any() or background[:, 0].any() or background[:, -1].any())
    return n


@fuzz(60)
@given(class_map=class_maps(), min_area=st.integers(0, 12), connectivity=CONNECTIVITY, max_grow=st.integers(0, 10))
def test_instances_from_classes(class_map, min_area, connectivity, max_grow):
    check_instances(instances_from_classes(class_map, min_area, connectivity, max_grow), class_map, min_area)


@fuzz(30)
@given(class_map=class_maps(values=4), connectivity=CONNECTIVITY)
def test_instances_refuse_class_values_over_2(class_map, connectivity):
    if class_map.max(initial=0) <= 2:
        instances_from_classes(class_map, connectivity=connectivity)
    else:
        with pytest.raises(ValueError, match="class_map must hold only 0 .*, found 3"):
            instances_from_classes(class_map, connectivity=connectivity)


def intensity_like(class_map: np.ndarray, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(100, 30, class_map.shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, class_map.shape, endpoint=True).astype(dtype)


def assert_summaries_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-9), key


@fuzz(50)
@given(
    class_map=class_maps(),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    seed=st.integers(0, 2**32 - 1),
    min_area=st.integers(0, 12),
    connectivity=CONNECTIVITY,
    max_grow=st.integers(0, 10),
    micronucleus_area=st.integers(1, 60),
    solidity=st.booleans(),
)
def test_segment_and_measure(class_map, dtype, seed, min_area, connectivity, max_grow, micronucleus_area, solidity):
    intensity = intensity_like(class_map, dtype, seed)
    args = {"min_area": min_area, "connectivity": connectivity, "max_grow": max_grow}
    labels, objects = segment_and_measure(class_map, intensity, solidity=solidity, **args)
    n = check_instances(labels, class_map, min_area)
    np.testing.assert_array_equal(labels, instances_from_classes(class_map, **args))
    assert objects.height == n
    assert objects["ObjectNumber"].to_list() == list(range(1, n + 1))
    assert objects["AreaShape_Area"].to_list() == np.bincount(labels.ravel(), minlength=n + 1)[1:].tolist()
    floats = objects.select(pl.col(pl.Float64))
    assert all(floats[c].is_finite().all() for c in floats.columns)
    again = measure(labels, intensity, solidity=solidity)
    assert again.columns == objects.columns
    for column in objects.columns:  # the same values (float sums may be added in another order)
        np.testing.assert_allclose(again[column].to_numpy(), objects[column].to_numpy(), rtol=1e-9, err_msg=column)

    painted, summary = segment_and_summarize(class_map, intensity, micronucleus_area=micronucleus_area, **args)
    np.testing.assert_array_equal(painted, labels)
    assert summary["Count_Nuclei"] + summary["Count_Micronuclei"] == n
    assert_summaries_equal(summary, summarize_frame(labels, intensity, micronucleus_area))
    assert_summaries_equal(summary, summarize_objects(objects, micronucleus_area))


@fuzz(40)
@given(
    class_map=class_maps(),
    seed=st.integers(0, 2**32 - 1),
    raw=st.booleans(),
    min_contrast=st.floats(0, 0.99),
    min_edge_area=st.integers(0, 30),
    grow_area=st.integers(0, 60),
    connectivity=CONNECTIVITY,
)
def test_filter_faint(class_map, seed, raw, min_contrast, min_edge_area, grow_area, connectivity):
    if class_map.size == 0:  # (an empty frame has no normalization)
        return
    frame = intensity_like(class_map, "uint16", seed)
    image, rescale = (frame, normalization_range(frame)) if raw else (normalize(frame), None)
    out = filter_faint(
        class_map,
        image,
        min_contrast,
        min_edge_area=min_edge_area,
        grow_area=grow_area,
        rescale=rescale,
        connectivity=connectivity,
    )
    assert out.dtype == np.uint8 and out.shape == class_map.shape
    # pixels of erased objects become background; grown objects take background pixels as boundary
    erased = (class_map != 0) & (out == 0)
    grown = (class_map == 0) & (out == 2)
    assert ((out == class_map) | erased | grown).all()
    check_instances(instances_from_classes(out, connectivity=connectivity), out, 4)
