"""Frame discovery: naming patterns, auto-detection, metadata columns, summary and every user error."""

from pathlib import Path

import polars as pl
import pytest

from nucleiscreen.engine.discover import METADATA_COLUMNS, discover, discover_images
from nucleiscreen.errors import UserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COLUMNS = [*METADATA_COLUMNS, "PathName_DNA", "FileName_DNA"]  # one channel, named DNA by default


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def cx7_names(plate: str, wells: list[str], fields: int, channels: int = 3, ext: str = "C01") -> list[str]:
    return [
        f"{plate}_{well}f{field:02d}d{channel}.{ext}"
        for well in wells
        for field in range(fields)
        for channel in range(channels)
    ]


def test_cx7_frames_table(tmp_path):
    plate = "MFGTMPcx7_170702000001"
    folder = touch(tmp_path / plate, *cx7_names(plate, ["B14", "A02", "P24"], fields=3))
    touch(folder, f"{plate}.mdb", "notes.txt")  # other files are ignored silently
    found = discover([folder])
    frames = found.frames
    assert found.pattern == "cx7"
    assert found.channels == (0, 1, 2) and found.channel == 0
    assert found.ignored == 0
    assert frames.columns == COLUMNS
    assert frames.schema["Metadata_Column"].is_integer() and frames.schema["Metadata_Site"].is_integer()
    assert frames.schema["Metadata_Plate"] == pl.String and frames.schema["PathName_DNA"] == pl.String
    assert frames.height == 9
    assert frames["Metadata_Well"].to_list() == ["A02"] * 3 + ["B14"] * 3 + ["P24"] * 3
    assert frames["Metadata_Site"].to_list() == [0, 1, 2] * 3
    assert set(frames["Metadata_Plate"]) == {plate}
    assert set(frames["Metadata_Channel"]) == {0}
    assert set(frames["PathName_DNA"]) == {str(folder.resolve())}
    row = frames.row(4, named=True)
    assert row["Metadata_Row"] == "B" and row["Metadata_Column"] == 14
    assert row["FileName_DNA"] == f"{plate}_B14f01d0.C01"


def test_cx7_variants_and_channel_choice(tmp_path):
    folder = touch(
        tmp_path / "p",
        "P1_C05f000o1.tif",  # 3-digit field, 'o' channel prefix
        "P1_C05f001o1.TIFF",
        "P1_C05f000o0.png",
        "P1_C05f001o0.DIB",
        "P1_C06f100o0.c01",
    )
    found = discover([folder], pattern="cx7")
    assert found.frames["Metadata_Site"].to_list() == [0, 1, 100]
    assert found.frames["Metadata_Well"].to_list() == ["C05", "C05", "C06"]
    second = discover([folder], channel=1)
    assert second.channel == 1
    assert second.frames["FileName_DNA"].to_list() == ["P1_C05f000o1.tif", "P1_C05f001o1.TIFF"]


def test_imagexpress(tmp_path):
    uuid = "3A1B2C4D-0000-1111-2222-333344445555"
    names = [f"Screen1_B07_s{site}_w{ch}{uuid}.tif" for site in range(1, 13) for ch in (1, 2)]
    names += ["Screen1_B08_w1.tif", "Screen1_B08_w2.tif"]  # single site: no _s
    names += [f"Screen1_B07_s1_w1_thumb{uuid}.tif", "Screen1_B08_w1_thumb.tif"]  # thumbnails
    folder = touch(tmp_path / "TimePoint_1", *names)
    found = discover([folder])
    assert found.pattern == "imagexpress"
    assert found.channel == 1 and found.channels == (1, 2)
    assert found.ignored == 2  # the thumbnails
    frames = found.frames
    assert frames.height == 13
    b07 = frames.filter(pl.col("Metadata_Well") == "B07")
    assert b07["Metadata_Site"].to_list() == list(range(1, 13))  # two-digit sites kept whole
    b08 = frames.filter(pl.col("Metadata_Well") == "B08")
    assert b08["Metadata_Site"].to_list() == [0]
    assert b08["FileName_DNA"].to_list() == ["Screen1_B08_w1.tif"]
    assert set(frames["Metadata_Plate"]) == {"Screen1"}
    assert not frames["FileName_DNA"].str.contains("thumb").any()
    assert discover([folder], channel=2).frames.height == 13


def test_opera_rows_and_plate_from_folder(tmp_path):
    names = [
        f"r{r:02d}c{c:02d}f{f:02d}p01-ch{ch}sk1fk1fl1.tiff"
        for r in (1, 2, 16)
        for c in (3, 24)
        for f in (1, 2)
        for ch in (1, 2)
    ]
    folder = touch(tmp_path / "PlateX__2024-01-01" / "Images", *names)
    found = discover([folder])
    assert found.pattern == "opera"
    assert found.channel == 1
    frames = found.frames
    assert frames.height == 12
    assert set(frames["Metadata_Plate"]) == {"PlateX__2024-01-01"}  # 'Images' is Harmony's subfolder
    assert frames["Metadata_Well"].unique(maintain_order=True).to_list() == ["A03", "A24", "B03", "B24", "P03", "P24"]
    assert frames["Metadata_Row"].unique(maintain_order=True).to_list() == ["A", "B", "P"]
    assert frames.unique("Metadata_Well", maintain_order=True)["Metadata_Column"].to_list() == [3, 24] * 3
    assert frames["Metadata_Site"].to_list() == [1, 2] * 6

    plain = touch(tmp_path / "PlateY", "r03c01f01p01-ch1sk1fk1fl1.tiff")
    assert discover([plain]).frames["Metadata_Plate"].to_list() == ["PlateY"]


def test_opera_z_planes_are_refused(tmp_path):
    folder = touch(tmp_path / "P", "r01c01f01p01-ch1sk1fk1fl1.tiff", "r01c01f01p02-ch1sk1fk1fl1.tiff")
    with pytest.raises(UserError, match="found twice.*p01-ch1.*p02-ch1|found twice.*p02-ch1.*p01-ch1"):
        discover([folder])


def test_user_regex(tmp_path):
    folder = touch(
        tmp_path / "assay7",
        "exp_Plate9_well-c3_field12_ch2.tif",
        "exp_Plate9_well-c3_field2_ch1.tif",
        "exp_Plate9_well-c10_field1_ch1.png",
        "exp_Plate9_well-c10_field1_ch1.jpg",  # not an image suffix: never seen
    )
    regex = r"exp_(?P<Plate>[^_]+)_well-(?P<Well>[a-p]\d+)_field(?P<Field>\d+)_ch(?P<ChannelNumber>\d)"
    found = discover([folder], pattern=regex)
    assert found.pattern == "custom" and found.regex == regex
    assert found.channel == 1  # the lowest channel seen
    frames = found.frames
    assert frames["Metadata_Well"].to_list() == ["C03", "C10"]
    assert frames["Metadata_Row"].to_list() == ["C", "C"]
    assert frames["Metadata_Column"].to_list() == [3, 10]
    assert frames["Metadata_Site"].to_list() == [2, 1]
    assert set(frames["Metadata_Plate"]) == {"Plate9"}


def test_user_regex_defaults_and_numeric_rows(tmp_path):
    folder = touch(tmp_path / "myplate", "row2_col7.tif", "row27_col1.tif")
    found = discover([folder], pattern=r"^row(?P<row>\d+)_col(?P<col>\d+)\.tif$")
    frames = found.frames
    assert frames["Metadata_Plate"].to_list() == ["myplate", "myplate"]  # no plate group: the folder
    assert frames["Metadata_Well"].to_list() == ["B07", "AA01"]  # 1536-well rows sort after single letters
    assert frames["Metadata_Site"].to_list() == [0, 0]
    assert frames["Metadata_Channel"].to_list() == [0, 0]
    assert found.channels == (0,)


def test_user_regex_python_only_syntax(tmp_path):
    """Look-ahead is not in polars' regex dialect: the Python fallback gives the same table."""
    names = cx7_names("P", ["A01", "B02"], fields=2, channels=2)
    folder = touch(tmp_path / "P", *names)
    plain = discover([folder], pattern=r"^(?P<plate>.+?)_(?P<well>[A-P]\d{2})f(?P<site>\d+)d(?P<channel>\d)")
    ahead = discover([folder], pattern=r"^(?P<plate>.+?)_(?=[A-P]\d{2}f)(?P<well>\w{3})f(?P<site>\d+)d(?P<channel>\d)")
    assert ahead.frames.equals(plain.frames)
    assert ahead.frames.equals(discover([folder]).frames)


def test_user_regex_errors(tmp_path):
    folder = touch(tmp_path / "p", "x_A01_s1.tif")
    with pytest.raises(UserError, match="nor a valid regular expression"):
        discover([folder], pattern="(?P<well>[A-P")
    with pytest.raises(UserError, match="needs a named group 'well'"):
        discover([folder], pattern=r"x_(?P<site>\d)")
    with pytest.raises(UserError, match="site 'one' in x_A01_sone.tif is not a number"):
        touch(folder, "x_A01_sone.tif")
        discover([folder], pattern=r"_(?P<well>A01)_s(?P<site>\w+)\.tif")
    with pytest.raises(UserError, match="cannot read a well from 'A' in x_A01_s1.tif"):
        discover([folder], pattern=r"_(?P<well>A)01_s1\.tif")


def test_auto_takes_the_pattern_matching_most_files(tmp_path):
    folder = touch(
        tmp_path / "mixed",
        "S_A01_s1_w1.tif",
        "S_A01_s2_w1.tif",
        "S_A02_s1_w1.tif",
        "MFGTMPcx7_170702000001_B14f07d0.tif",  # one stray CX7 name
    )
    found = discover([folder])
    assert found.pattern == "imagexpress"
    assert found.frames.height == 3
    assert found.ignored == 1
    assert "1 image file did not match" in found.summary()
    assert discover([folder], pattern="cx7").frames.height == 1


def test_explicit_files_and_overlapping_sources(tmp_path):
    folder = touch(tmp_path / "P1", *cx7_names("P1", ["A01", "A02"], fields=2, channels=1))
    one = folder / "P1_A02f01d0.C01"
    found = discover([one])
    assert found.frames["FileName_DNA"].to_list() == ["P1_A02f01d0.C01"]
    assert found.frames["PathName_DNA"].to_list() == [str(folder.resolve())]
    # A folder given twice, or with a file inside it, lists each frame once.
    assert discover([folder, folder, one, tmp_path]).frames.height == 4
    # A link to the same folder does not duplicate its frames.
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    assert discover([tmp_path]).frames.height == 4


def test_hidden_files_skipped(tmp_path):
    folder = touch(tmp_path / "P1", "P1_A01f00d0.C01", "._P1_A01f00d0.C01")
    touch(folder / ".snapshot", "P1_A01f00d0.C01")
    found = discover([folder])
    assert found.frames.height == 1
    assert found.ignored == 0


def test_missing_fields_summary(tmp_path):
    names = cx7_names("PlateA", ["A01", "A02", "B01"], fields=3, channels=2)
    names.remove("PlateA_A02f01d0.C01")
    names.remove("PlateA_A02f02d0.C01")
    folder = touch(tmp_path / "PlateA", *names)
    found = discover([folder])
    missing = found.missing_fields()
    assert missing.rows() == [("PlateA", "A02", 1, 3)]
    lines = found.summary().splitlines()
    assert lines[0] == "pattern: cx7 (7 frames of channel 0)"
    assert lines[1] == "plates: 1 (PlateA)"
    assert lines[2] == "wells: 3"
    assert lines[3] == "fields per well: 3 (2 wells), 1 (1 well)"
    assert lines[4] == "channels seen: 0, 1; using channel 0"
    assert lines[5] == "missing fields: 1 well with fewer: PlateA A02 (1 of 3)"

    full = discover([folder], channel=1)
    assert full.summary().splitlines()[-1] == "missing fields: none"
    assert full.missing_fields().is_empty()


def test_real_aitslab_file_names():
    folder = DATA / "aitslab-bioimaging1" / "train" / "images"
    found = discover([folder])
    assert found.pattern == "cx7"
    assert found.frames.height == 30
    first = found.frames.filter(pl.col("FileName_DNA") == "MFGTMPcx7_170702000001_B14f07d0.png").row(0, named=True)
    assert first["Metadata_Plate"] == "MFGTMPcx7_170702000001"
    assert (first["Metadata_Well"], first["Metadata_Row"], first["Metadata_Column"]) == ("B14", "B", 14)
    assert (first["Metadata_Site"], first["Metadata_Channel"]) == (7, 0)


# --- errors -------------------------------------------------------------------------------------


def test_folder_not_found(tmp_path):
    with pytest.raises(UserError, match=f"^folder not found: {tmp_path / 'nope'}$"):
        discover([tmp_path / "nope"])
    with pytest.raises(UserError, match="^file not found: .*x.C01$"):
        discover([tmp_path / "x.C01"])


def test_no_frames_matched_names_an_example(tmp_path):
    folder = touch(tmp_path / "p", "holiday_photo.png", "zz.tif")
    with pytest.raises(
        UserError,
        match="no frames matched the cx7, imagexpress, opera naming patterns.*"
        "2 image files seen, e.g. holiday_photo.png",
    ):
        discover([folder])
    with pytest.raises(UserError, match="no frames matched the opera pattern"):
        discover([folder], pattern="opera")


def test_no_image_files(tmp_path):
    folder = touch(tmp_path / "p", "readme.txt")
    with pytest.raises(UserError, match=r"no image files \(.*\) in .*p \(1 other file, e.g. readme.txt\)"):
        discover([folder])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no image files .* in .*empty$"):
        discover([empty])


def test_channel_not_present(tmp_path):
    folder = touch(tmp_path / "P", *cx7_names("P", ["A01"], fields=1, channels=2))
    with pytest.raises(UserError, match="channel 5 is not among the cx7 frames found; channels seen: 0, 1"):
        discover([folder], channel=5)
    only_d1 = touch(tmp_path / "Q", "Q_A01f00d1.C01")
    with pytest.raises(UserError, match="channel 0 is not .* channels seen: 1"):
        discover([only_d1])


def test_duplicate_frame_in_two_formats(tmp_path):
    folder = touch(tmp_path / "P", "P_A01f00d0.C01", "P_A01f00d0.tif", "P_A02f00d0.C01")
    with pytest.raises(
        UserError,
        match=r"plate P, well A01, site 0, channel 0\) was found twice: "
        r".*P_A01f00d0\.(C01|tif) and .*P_A01f00d0\.(C01|tif)",
    ):
        discover([folder])


def test_same_plate_in_two_folders(tmp_path):
    first = touch(tmp_path / "run1" / "P", *cx7_names("P", ["A01", "A02"], fields=1, channels=1))
    second = touch(tmp_path / "run2" / "P", *cx7_names("P", ["A01", "A02"], fields=1, channels=1))
    with pytest.raises(UserError, match=r"found twice: .*run[12].* and .*run[12].*\(1 more frames are duplicated\)"):
        discover([first, second])


def test_explicit_file_must_match(tmp_path):
    folder = touch(tmp_path / "P", "P_A01f00d0.C01", "overview.tif")
    with pytest.raises(UserError, match=r"overview\.tif does not match the cx7 naming"):
        discover([folder / "P_A01f00d0.C01", folder / "overview.tif"])


# --- discover_images ----------------------------------------------------------------------------


def test_discover_images(tmp_path):
    touch(tmp_path / "a", "one.tif", "two.PNG", "notes.txt", ".hidden.tif")
    touch(tmp_path / "a" / "deeper", "three.C01", "four.dib", "five.tiff")
    loose = touch(tmp_path / "b", "six.png") / "six.png"
    found = discover_images([tmp_path / "a", loose, loose])
    assert [p.name for p in found] == ["five.tiff", "four.dib", "three.C01", "one.tif", "two.PNG", "six.png"]
    assert all(p.is_absolute() for p in found)


def test_discover_images_errors(tmp_path):
    touch(tmp_path / "p", "notes.txt")
    with pytest.raises(UserError, match=r"notes\.txt is not an image file"):
        discover_images([tmp_path / "p" / "notes.txt"])
    with pytest.raises(UserError, match="no image files"):
        discover_images([tmp_path / "p"])
    with pytest.raises(UserError, match="folder not found"):
        discover_images([tmp_path / "q"])
