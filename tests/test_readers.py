"""Frame readers: Cellomics C01/DIB (round trip and hand-built files), TIFF, PNG, and their errors."""

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from nucleiscreen.cellomics import write_c01
from nucleiscreen.engine.readers import FrameReadError, read_c01, read_c01_header, read_dib, read_frame

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def dib_bytes(pixels: np.ndarray, planes: int = 1, bits: int | None = None, ppm: int = 0) -> bytes:
    """A Cellomics DIB built field by field from the documented layout, independent of the writer.

    ``pixels`` is (planes, rows, columns) or (rows, columns); ``bits`` overrides the header's
    bits per pixel (to build broken files).
    """
    pixels = pixels.reshape(planes, pixels.shape[-2], pixels.shape[-1])
    height, width = pixels.shape[1:]
    bits = pixels.dtype.itemsize * 8 if bits is None else bits

    def i32(v: int) -> bytes:
        return v.to_bytes(4, "little", signed=True)

    def i16(v: int) -> bytes:
        return v.to_bytes(2, "little", signed=True)

    header = (
        i32(52)  # skipped
        + i32(width)
        + i32(height)
        + i16(planes)
        + i16(bits)
        + i32(0)  # compression
        + i32(pixels.nbytes)  # skipped
        + i32(ppm)
        + i32(ppm)
        + i32(0)  # colours used
        + i32(0)  # colours important
        + bytes(12)
    )
    assert len(header) == 52
    return header + pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def c01_bytes(dib: bytes) -> bytes:
    return b"\x00\x00\x00\x10" + zlib.compress(dib)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_c01_round_trip(tmp_path, rng, dtype):
    image = rng.integers(0, np.iinfo(dtype).max, size=(37, 53), dtype=dtype, endpoint=True)
    path = tmp_path / "plate_B07f00d0.C01"
    write_c01(path, image, pixel_size_um=0.65)
    got = read_c01(path)
    assert got.dtype == dtype and got.shape == (37, 53)
    np.testing.assert_array_equal(got, image)
    assert got.flags.writeable
    np.testing.assert_array_equal(read_frame(path), image)
    header = read_c01_header(path)
    assert (header.width, header.height, header.planes, header.bits_per_pixel) == (
        53,
        37,
        1,
        image.itemsize * 8,
    )
    assert header.pixel_size_um == pytest.approx(0.65, rel=1e-6)


def test_c01_written_file_layout(tmp_path, rng):
    """The writer's bytes decode with the standard library alone, as the layout says."""
    image = rng.integers(0, 65535, size=(5, 9), dtype=np.uint16)
    path = tmp_path / "x.C01"
    write_c01(path, image, level=9)
    raw = path.read_bytes()
    assert int.from_bytes(raw[:4], "big") == 16
    dib = zlib.decompress(raw[4:])
    assert int.from_bytes(dib[4:8], "little") == 9 and int.from_bytes(dib[8:12], "little") == 5
    assert int.from_bytes(dib[12:14], "little") == 1 and int.from_bytes(dib[14:16], "little") == 16
    assert int.from_bytes(dib[24:28], "little") == 0  # no pixel size given
    np.testing.assert_array_equal(np.frombuffer(dib, "<u2", offset=52).reshape(5, 9), image)


def test_c01_made_by_hand(tmp_path):
    image = (np.arange(37 * 53, dtype=np.uint32) * 31 % 65536).astype(np.uint16).reshape(37, 53)
    path = tmp_path / "MFGTMPcx7_170702000001_B14f07d0.C01"
    path.write_bytes(c01_bytes(dib_bytes(image, ppm=1_538_462)))
    got = read_frame(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, image)
    header = read_c01_header(path)
    assert (header.width, header.height) == (53, 37)
    assert header.pixel_size_um == pytest.approx(0.65, rel=1e-6)


def test_c01_lowercase_suffix_and_8_bit(tmp_path):
    image = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    path = tmp_path / "a.c01"
    path.write_bytes(c01_bytes(dib_bytes(image)))
    got = read_frame(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, image)


def test_c01_planes(tmp_path, rng):
    stack = rng.integers(0, 65535, size=(2, 8, 11), dtype=np.uint16)
    path = tmp_path / "two.C01"
    path.write_bytes(c01_bytes(dib_bytes(stack, planes=2)))
    np.testing.assert_array_equal(read_c01(path), stack[0])
    np.testing.assert_array_equal(read_c01(path, plane=1), stack[1])
    assert read_c01_header(path).planes == 2
    with pytest.raises(FrameReadError, match="plane 2 requested, the file has 2"):
        read_c01(path, plane=2)


def test_dib_16_and_32_bit(tmp_path, rng):
    image = rng.integers(0, 65535, size=(13, 7), dtype=np.uint16)
    path = tmp_path / "MFGTMPcx7_170702000001_A01f00d0.DIB"
    path.write_bytes(dib_bytes(image))
    np.testing.assert_array_equal(read_frame(path), image)
    np.testing.assert_array_equal(read_dib(path), image)
    assert read_c01_header(path).bits_per_pixel == 16

    wide = rng.integers(0, 2**32 - 1, size=(3, 5), dtype=np.uint32)
    path32 = tmp_path / "wide.dib"
    path32.write_bytes(dib_bytes(wide))
    got = read_frame(path32)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, wide)


def test_c01_into_out(tmp_path, rng):
    image = rng.integers(0, 4000, size=(16, 24), dtype=np.uint16)
    path = tmp_path / "a.C01"
    write_c01(path, image)
    batch = np.zeros((3, 16, 24), np.uint16)
    assert read_frame(path, out=batch[1]) is batch[1] or np.shares_memory(read_frame(path, out=batch[1]), batch)
    np.testing.assert_array_equal(batch[1], image)
    assert not batch[0].any() and not batch[2].any()


def test_c01_truncated_and_corrupt(tmp_path, rng):
    image = rng.integers(0, 65535, size=(64, 64), dtype=np.uint16)
    good = tmp_path / "good.C01"
    write_c01(good, image)
    raw = good.read_bytes()

    cut = tmp_path / "cut.C01"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FrameReadError, match=r"cut\.C01.*truncated"):
        read_frame(cut)

    flipped = bytearray(raw)
    flipped[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.C01"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(FrameReadError, match=r"corrupt\.C01"):
        read_frame(corrupt)

    garbage = tmp_path / "garbage.C01"
    garbage.write_bytes(b"II*\x00" + bytes(range(200)))
    with pytest.raises(FrameReadError, match="not a C01 file"):
        read_frame(garbage)

    empty = tmp_path / "empty.C01"
    empty.write_bytes(b"")
    with pytest.raises(FrameReadError, match="too short"):
        read_frame(empty)


def test_c01_header_claims_more_pixels_than_stored(tmp_path):
    image = np.ones((10, 10), np.uint16)
    dib = bytearray(dib_bytes(image))
    dib[8:12] = (20).to_bytes(4, "little")  # height 20, but only 10 rows stored
    path = tmp_path / "short.C01"
    path.write_bytes(c01_bytes(bytes(dib)))
    with pytest.raises(FrameReadError, match="truncated, 200 bytes of pixel data .* needs 400"):
        read_c01(path)
    dib_path = tmp_path / "short.dib"
    dib_path.write_bytes(bytes(dib))
    with pytest.raises(FrameReadError, match="truncated"):
        read_frame(dib_path)


def test_c01_unsupported_bits_and_bad_size(tmp_path):
    image = np.ones((4, 4), np.uint16)
    path = tmp_path / "twelve.C01"
    path.write_bytes(c01_bytes(dib_bytes(image, bits=12)))
    with pytest.raises(FrameReadError, match="12 bits per pixel is not supported"):
        read_frame(path)
    dib = bytearray(dib_bytes(image))
    dib[4:8] = (0).to_bytes(4, "little")
    bad = tmp_path / "zero.C01"
    bad.write_bytes(c01_bytes(bytes(dib)))
    with pytest.raises(FrameReadError, match="invalid Cellomics header"):
        read_frame(bad)


def test_write_c01_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_c01(tmp_path / "f.C01", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_c01(tmp_path / "f.C01", np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(ValueError, match="positive"):
        write_c01(tmp_path / "f.C01", np.zeros((4, 4), np.uint16), pixel_size_um=0)


def test_tiff_into_preallocated_out(tmp_path, rng):
    image = rng.integers(0, 65535, size=(37, 53), dtype=np.uint16)
    path = tmp_path / "frame.TIF"
    tifffile.imwrite(path, image)
    batch = np.zeros((2, 37, 53), np.uint16)
    got = read_frame(path, out=batch[1])
    assert np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1], image)
    assert not batch[0].any()
    np.testing.assert_array_equal(read_frame(path), image)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "zstd"])
def test_compressed_tiff(tmp_path, rng, compression):
    image = rng.integers(0, 4000, size=(40, 30), dtype=np.uint16)
    path = tmp_path / "frame.tiff"
    tifffile.imwrite(path, image, compression=compression)
    np.testing.assert_array_equal(read_frame(path), image)
    out = np.empty_like(image)
    assert read_frame(path, out=out) is out
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("options", [{}, {"byteorder": ">"}, {"rowsperstrip": 7}, {"rowsperstrip": 1},
                                     {"byteorder": ">", "rowsperstrip": 5}, {"metadata": None}])
def test_plain_tiff_fast_path_equals_tifffile(tmp_path, rng, dtype, options):
    """Uncompressed single-page frames are read by the engine's own TIFF path, exactly as tifffile reads them."""
    from nucleiscreen.engine.readers import _plain_tiff

    frame = rng.integers(0, np.iinfo(dtype).max, (37, 53)).astype(dtype)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, frame, **options)
    got = _plain_tiff(path)
    assert got is not None and got.dtype == frame.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, tifffile.imread(path))
    np.testing.assert_array_equal(read_frame(path), frame)


@pytest.mark.parametrize("write", [
    lambda p, f: tifffile.imwrite(p, f, compression="zlib"),
    lambda p, f: tifffile.imwrite(p, f, tile=(16, 16)),
    lambda p, f: tifffile.imwrite(p, np.stack([f, f])),  # a stack: tifffile's error
    lambda p, f: tifffile.imwrite(p, f.astype(np.float32)),
    lambda p, f: tifffile.imwrite(p, f.astype(np.int16)),
    lambda p, f: tifffile.imwrite(p, np.stack([f, f, f], -1), photometric="rgb"),
    lambda p, f: tifffile.imwrite(p, f, photometric="miniswhite"),
    lambda p, f: tifffile.imwrite(p, f, bigtiff=True),
])
def test_other_tiffs_go_through_tifffile(tmp_path, rng, write):
    from nucleiscreen.engine.readers import _plain_tiff

    path = tmp_path / "f.tif"
    write(path, rng.integers(0, 4000, (32, 48)).astype(np.uint16))
    assert _plain_tiff(path) is None


def test_truncated_plain_tiff_is_a_frame_error(tmp_path, rng):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FrameReadError):
        read_frame(path)


def test_out_checks_shape_and_cast(tmp_path):
    image8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path8 = tmp_path / "eight.tif"
    tifffile.imwrite(path8, image8)
    out16 = np.zeros((3, 4), np.uint16)
    np.testing.assert_array_equal(read_frame(path8, out=out16), image8)  # uint8 fits uint16

    path16 = tmp_path / "sixteen.tif"
    tifffile.imwrite(path16, image8.astype(np.uint16) * 1000)
    with pytest.raises(FrameReadError, match="uint16 pixels do not fit a uint8 buffer"):
        read_frame(path16, out=np.zeros((3, 4), np.uint8))
    with pytest.raises(FrameReadError, match=r"sixteen\.tif: the frame is 3x4 .* the buffer 4x3"):
        read_frame(path16, out=np.zeros((4, 3), np.uint16))


def test_float_tiff_is_float32(tmp_path):
    image = np.linspace(0, 1, 20, dtype=np.float64).reshape(4, 5)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, image)
    got = read_frame(path)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, image, rtol=1e-6)


def test_rgb_reduced_only_when_channels_equal(tmp_path, rng):
    grey = rng.integers(0, 255, size=(9, 10), dtype=np.uint8)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.stack([grey] * 3, axis=-1), photometric="rgb")
    np.testing.assert_array_equal(read_frame(rgb), grey)
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.stack([grey] * 3), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_frame(planar), grey)

    colour = np.stack([grey, grey, 255 - grey], axis=-1)
    bad = tmp_path / "colour.tif"
    tifffile.imwrite(bad, colour, photometric="rgb")
    with pytest.raises(FrameReadError, match="3 different colour channels"):
        read_frame(bad)


def test_tiff_stack_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(FrameReadError, match="a stack of 4 frames"):
        read_frame(path)


def test_png(tmp_path, rng):
    grey8 = rng.integers(0, 255, size=(21, 17), dtype=np.uint8)
    path = tmp_path / "g.png"
    path.write_bytes(imagecodecs.png_encode(grey8))
    np.testing.assert_array_equal(read_frame(path), grey8)

    grey16 = rng.integers(0, 65535, size=(21, 17), dtype=np.uint16)
    path16 = tmp_path / "g16.PNG"
    path16.write_bytes(imagecodecs.png_encode(grey16))
    got = read_frame(path16)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, grey16)

    rgba = np.dstack([grey8, grey8, grey8, np.full_like(grey8, 255)])
    path_rgba = tmp_path / "rgba.png"
    path_rgba.write_bytes(imagecodecs.png_encode(rgba))
    np.testing.assert_array_equal(read_frame(path_rgba), grey8)

    out = np.zeros((21, 17), np.uint16)
    np.testing.assert_array_equal(read_frame(path, out=out), grey8)


def test_real_aitslab_png():
    from skimage.io import imread

    path = sorted((DATA / "aitslab-bioimaging1" / "train" / "images").glob("*.png"))[0]
    image = read_frame(path)
    assert image.shape == (1104, 1104)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, imread(path))


@pytest.mark.parametrize("name", ["nope.tif", "nope.TIFF", "nope.png", "nope.C01", "nope.dib"])
def test_missing_file(tmp_path, name):
    with pytest.raises(FrameReadError, match=rf"{name}: file not found"):
        read_frame(tmp_path / name)


def test_unsupported_and_undecodable(tmp_path):
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(b"\xff\xd8")
    with pytest.raises(FrameReadError, match="unsupported file type '.jpg'"):
        read_frame(jpg)
    fake_tif = tmp_path / "fake.tif"
    fake_tif.write_bytes(b"not a tiff at all")
    with pytest.raises(FrameReadError, match=r"fake\.tif: cannot decode \.tif file"):
        read_frame(fake_tif)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(FrameReadError, match=r"fake\.png: cannot decode"):
        read_frame(fake_png)
    assert issubclass(FrameReadError, ValueError)


# --- hardening: what a header claims, formats under another name, broken Cellomics files ---------------------------


def patch_tiff_tags(data: bytes, **values: int) -> bytes:
    """The TIFF ``data`` with tags of the first page (by tifffile name) set to ``values`` in place."""
    data = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages.first.tags
        order = tif.byteorder
        for name, value in values.items():
            tag = tags[name]
            struct.pack_into(order + ("H" if tag.dtype == 3 else "I"), data, tag.valueoffset, value)
    return bytes(data)


def tiff_bytes(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (100_000, 100_000, r"the header claims 100000x100000 pixels .* more than nucleiscreen reads \(2147483648\)"),
        (5_000, 5_000, r"truncated or corrupt, the header claims 5000x5000 pixels .* more than \d+ bytes of file hold"),
    ],
)
def test_tiff_header_claiming_a_huge_frame_is_refused_before_allocating(tmp_path, compression, width, height, reason):
    path = tmp_path / "huge.tif"
    path.write_bytes(patch_tiff_tags(tiff_bytes(np.ones((4, 4), np.uint16), compression=compression),
                                     ImageWidth=width, ImageLength=height, RowsPerStrip=height))
    with pytest.raises(FrameReadError, match=rf"huge\.tif: {reason}"):
        read_frame(path)


def test_compressed_tiff_with_strips_missing_is_refused(tmp_path, rng):
    """tifffile fills the strips a header claims but the file lacks with zeros (tests/test_fuzz.py catches it)."""
    image = rng.integers(1, 4000, (13, 21)).astype(np.uint16)
    path = tmp_path / "f.tif"
    path.write_bytes(patch_tiff_tags(tiff_bytes(image, compression="zstd"), ImageLength=14))
    with pytest.raises(FrameReadError, match=r"f\.tif: truncated or corrupt, 21x14 pixels .* need 2 strips or tiles, "
                                             r"the file lists 1"):
        read_frame(path)


def test_compressed_tiff_cut_inside_its_pixels_is_truncated(tmp_path, rng):
    path = tmp_path / "f.tif"
    path.write_bytes(tiff_bytes(rng.integers(0, 4000, (64, 64)).astype(np.uint16), compression="zlib")[:-50])
    with pytest.raises(FrameReadError, match=r"f\.tif: truncated, the pixel data runs past the end of the file"):
        read_frame(path)


def test_blank_compressed_frames_are_within_the_ratio_bound(tmp_path):
    """The most compressible real frame, blank, in one strip: zstd at its best and LZMA stay under the 65536:1 bound."""
    blank = np.zeros((2048, 2048), np.uint16)
    for compression, level in (("zstd", 19), ("lzma", None), ("zlib", 9), ("lzw", None), ("packbits", None)):
        path = tmp_path / f"{compression}.tif"
        args = {"compressionargs": {"level": level}} if level else {}
        tifffile.imwrite(path, blank, compression=compression, rowsperstrip=2048, **args)
        assert not read_frame(path).any()


def test_plain_tiff_bits_tag_of_another_type_goes_to_tifffile(tmp_path, rng):
    """A BitsPerSample entry the fast path does not read (here of type BYTE) sends the file to tifffile, whose
    diagnosis the user gets (the fast path raised TypeError: 'int' * 'NoneType')."""
    from nucleiscreen.engine.readers import _plain_tiff

    image = rng.integers(0, 200, (5, 7)).astype(np.uint8)
    data = bytearray(tiff_bytes(image))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        entry = tif.pages.first.tags["BitsPerSample"].offset
    struct.pack_into("<H", data, entry + 2, 1)  # SHORT -> BYTE: the value 8 reads the same
    path = tmp_path / "f.tif"
    path.write_bytes(bytes(data))
    assert _plain_tiff(path) is None
    with pytest.raises(FrameReadError, match=r"f\.tif: cannot decode \.tif file \(ValueError: invalid literal"):
        read_frame(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_float_tiff_with_nan_and_inf_is_returned_as_stored(tmp_path, dtype, compression):
    image = np.linspace(0, 1, 30).reshape(5, 6).astype(dtype)
    image[0, :3] = np.nan, np.inf, -np.inf
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, image, compression=compression)
    got = read_frame(path)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, image.astype(np.float32))  # (NaN equals NaN here)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.stack([image] * 3, axis=-1), photometric="rgb")
    np.testing.assert_array_equal(read_frame(rgb), image.astype(np.float32))  # equal channels, NaN included


def test_png_named_tif_is_read_and_tiff_named_png_too(tmp_path, rng):
    image = rng.integers(0, 65535, (9, 11)).astype(np.uint16)
    png = tmp_path / "frame.tif"
    png.write_bytes(imagecodecs.png_encode(image))
    np.testing.assert_array_equal(read_frame(png), image)
    tif = tmp_path / "frame.png"
    tif.write_bytes(tiff_bytes(image, compression="zlib"))
    np.testing.assert_array_equal(read_frame(tif), image)


@pytest.mark.parametrize("name", ["frame.tif", "frame.TIFF", "frame.png"])
def test_jpeg_under_a_lossless_name_is_refused(tmp_path, rng, name):
    path = tmp_path / name
    path.write_bytes(imagecodecs.jpeg8_encode(rng.integers(0, 255, (16, 16)).astype(np.uint8)))
    suffix = Path(name).suffix.lower()
    with pytest.raises(FrameReadError, match=rf"{name}: a JPEG file \(lossy\) named \{suffix}; nucleiscreen reads "
                                             r"TIFF, PNG and C01$"):
        read_frame(path)


def test_not_a_tiff_or_png_says_what_it_starts_with(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(FrameReadError, match=r"empty\.tif: cannot decode \.tif file: not a TIFF file \(an empty"):
        read_frame(empty)
    text = tmp_path / "text.png"
    text.write_bytes(b"hello, world")
    with pytest.raises(FrameReadError, match=r"text\.png: cannot decode \.png file: not a PNG file \(it starts with "
                                             r"b'hello, w'\)"):
        read_frame(text)


def png_with_ihdr(width: int, height: int, depth: int = 16, colour: int = 0) -> bytes:
    data = bytearray(imagecodecs.png_encode(np.ones((4, 4), np.uint16)))
    struct.pack_into(">IIBB", data, 16, width, height, depth, colour)
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    return bytes(data)


@pytest.mark.parametrize(
    ("ihdr", "reason"),
    [
        ((100_000, 100_000), r"the header claims 100000x100000 pixels .* more than nucleiscreen reads"),
        ((5_000, 5_000), r"truncated or corrupt, the header claims 5000x5000 pixels .* even at 1032:1 compression"),
        ((0, 4), r"invalid PNG header \(width 0, height 4, bit depth 16, colour type 0\)"),
        ((4, 4, 16, 3), r"invalid PNG header \(.* bit depth 16, colour type 3\)"),  # palettes have 1-8 bits
        ((4, 4, 8, 5), r"invalid PNG header \(.* colour type 5\)"),
    ],
)
def test_png_header_is_checked_before_decoding(tmp_path, ihdr, reason):
    path = tmp_path / "f.png"
    path.write_bytes(png_with_ihdr(*ihdr))
    with pytest.raises(FrameReadError, match=rf"f\.png: {reason}"):
        read_frame(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(png_with_ihdr(*ihdr)[:20])
    with pytest.raises(FrameReadError, match=r"cut\.png: cannot decode PNG file: no IHDR chunk"):
        read_frame(cut)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (4, -5, r"invalid Cellomics header \(width -5, height 10, planes 1\)"),
        (8, 0, r"invalid Cellomics header \(width 10, height 0, planes 1\)"),
        (8, -1, r"invalid Cellomics header \(width 10, height -1, planes 1\)"),
        (12, 0, r"invalid Cellomics header \(width 10, height 10, planes 0\)"),
        (12, -3, r"invalid Cellomics header \(width 10, height 10, planes -3\)"),
        (14, 24, r"24 bits per pixel is not supported \(8, 16 or 32\)"),
        (8, 5, r"more pixel data than the header \(10x5 pixels .*\) describes \(100 bytes\); a corrupt header"),
    ],
)
def test_c01_and_dib_with_a_bad_header(tmp_path, field, value, reason):
    dib = bytearray(dib_bytes(np.ones((10, 10), np.uint16)))
    struct.pack_into("<h" if field in (12, 14) else "<i", dib, field, value)
    for name, data in (("f.C01", c01_bytes(bytes(dib))), ("f.dib", bytes(dib))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FrameReadError, match=rf"{name.replace('.', '[.]')}: {reason}"):
            read_frame(path)


def test_c01_header_claiming_more_than_the_stream_can_hold(tmp_path):
    dib = bytearray(dib_bytes(np.ones((10, 10), np.uint16)))
    struct.pack_into("<ii", dib, 4, 20_000, 20_000)  # 800 MB from a stream of a few dozen bytes
    path = tmp_path / "f.C01"
    path.write_bytes(c01_bytes(bytes(dib)))
    with pytest.raises(FrameReadError, match=r"truncated or corrupt, the header claims 20000x20000 pixels .* even at "
                                             r"1032:1 compression"):
        read_frame(path)
    struct.pack_into("<ii", dib, 4, 100_000, 100_000)
    for name, data in (("big.C01", c01_bytes(bytes(dib))), ("big.dib", bytes(dib))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FrameReadError, match=r"claims 100000x100000 pixels .* more than nucleiscreen reads"):
            read_frame(tmp_path / name)
        with pytest.raises(FrameReadError, match=r"more than nucleiscreen reads"):
            read_c01_header(tmp_path / name)


def test_c01_wrong_marker_stream_cut_and_trailing_bytes(tmp_path, rng):
    image = rng.integers(0, 65535, (40, 50), dtype=np.uint16)
    good = c01_bytes(dib_bytes(image))
    marker = tmp_path / "marker.C01"
    marker.write_bytes(b"\x00\x00\x00\x07" + good[4:])  # an intact stream behind another marker
    for read in (read_frame, read_c01_header):
        with pytest.raises(FrameReadError, match=r"marker\.C01: not a C01 file, bytes 0-3 read 7, not the C01 marker"):
            read(marker)
    cut = tmp_path / "cut.C01"
    cut.write_bytes(good[: len(good) * 3 // 4])
    with pytest.raises(FrameReadError, match=r"cut\.C01: truncated, the zlib stream breaks off after \d+ of the 4000 "
                                             r"bytes of pixel data the header \(50x40 pixels"):
        read_frame(cut)
    headless = tmp_path / "headless.C01"
    headless.write_bytes(good[:12])
    for read in (read_frame, read_c01_header):
        with pytest.raises(FrameReadError, match=r"headless\.C01: truncated, the zlib stream ends before the 52-byte"):
            read(headless)
    # bytes after the end of the zlib stream: ignored (its checksum covers header and pixels)
    trailing = tmp_path / "trailing.C01"
    trailing.write_bytes(good + b"\x00" * 100)
    np.testing.assert_array_equal(read_frame(trailing), image)
    # pixel data beyond what the header describes, in the stream or in a DIB: refused
    extra = dib_bytes(image) + b"\x01\x02"
    for name, data in (("extra.C01", c01_bytes(extra)), ("extra.dib", extra)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FrameReadError, match=rf"{name.split('.')[0]}\.\w+: more pixel data than the header"):
            read_frame(tmp_path / name)


def test_dib_directory_and_short_file(tmp_path):
    folder = tmp_path / "d.dib"
    folder.mkdir()
    with pytest.raises(FrameReadError, match=r"d\.dib: a folder, not an image file"):
        read_frame(folder)
    short = tmp_path / "s.dib"
    short.write_bytes(b"\x34\x00\x00\x00" * 3)
    with pytest.raises(FrameReadError, match=r"s\.dib: 12 bytes, shorter than the 52-byte Cellomics header"):
        read_frame(short)
