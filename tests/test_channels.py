"""Channels as data: ``--channels NAME=TOKEN`` names a screen's channels, every column of a channel carries its name,
and a wrong option is one line before anything is written."""

import numpy as np
import polars as pl
import pytest

from nucleiscreen.cli import main
from nucleiscreen.engine.channels import Channels
from nucleiscreen.engine.discover import discover
from nucleiscreen.errors import UserError
from nucleiscreen.simulate import simulate_screen


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return simulate_screen(tmp_path_factory.mktemp("ch") / "sim", plates=1, fields=1, size=96, seed=4, masks=False,
                           channels=3, progress=False)


def test_parse_names_tokens_and_the_nuclei_channel():
    ch = Channels.parse("DNA=d0, Lyso=d1,Cell=2")
    assert ch.names == ("DNA", "Lyso", "Cell") and ch.numbers == (0, 1, 2) and ch.nuclei == "DNA"
    assert ch.markers == ("Lyso", "Cell") and ch.columns()[:2] == ["PathName_DNA", "FileName_DNA"]
    assert Channels.parse("Hoechst=w1,Actin=w2", nuclei="Hoechst").nuclei == "Hoechst"
    assert Channels.parse(None) == Channels() and Channels.parse(None, number=2).numbers == (2,)


@pytest.mark.parametrize("text,nuclei,message", [
    ("DNA", None, "NAME=TOKEN"),
    ("DNA=x", None, "NAME=TOKEN"),
    ("DNA=d0,DNA=d1", None, "given twice"),
    ("DNA=d0,Lyso=d0", None, "named twice"),
    ("my_dna=d0", None, "letters and digits"),
    ("1st=d0", None, "start with a letter"),
    ("DNA=d0", "Lyso", "not one of"),
])
def test_bad_channel_options_are_one_line(text, nuclei, message):
    with pytest.raises(UserError, match=message):
        Channels.parse(text, nuclei)


def test_discovery_groups_a_fields_frames(screen):
    found = discover([screen.images], channels=Channels.parse("DNA=d0,Lyso=d1,Cell=d2"))
    frames = found.frames
    assert frames.height == 384 and found.incomplete.height == 0
    assert [c for c in frames.columns if c.startswith("FileName_")] == ["FileName_DNA", "FileName_Lyso",
                                                                        "FileName_Cell"]
    row = frames.row(0, named=True)
    assert row["FileName_DNA"].endswith("d0.tif") and row["FileName_Cell"].endswith("d2.tif")
    assert row["FileName_DNA"][:-6] == row["FileName_Lyso"][:-6] == row["FileName_Cell"][:-6]  # one field
    with pytest.raises(UserError, match="Lyso=d7 is not among"):
        discover([screen.images], channels=Channels.parse("DNA=d0,Lyso=d7"))
    with pytest.raises(UserError, match="write channels as d1"):
        discover([screen.images], channels=Channels.parse("DNA=d0,Lyso=w1"))


def test_a_field_missing_a_channel_is_listed_apart(screen, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(screen.images, images)
    gone = sorted(images.rglob("*d1.tif"))[5]
    gone.unlink()
    found = discover([images], channels=Channels.parse("DNA=d0,Lyso=d1"))
    assert found.frames.height == 383 and found.incomplete.height == 1
    assert found.incomplete["Missing"].to_list() == [["Lyso"]]
    assert "fields lacking a channel: 1" in found.summary()


def test_the_nuclei_channel_renamed_names_every_column(screen, tmp_path, capsys):
    """``--channels Hoechst=d0``: one option, and every column of the run and of its analysis says Hoechst."""
    out = tmp_path / "run"
    assert main(["--quiet", "run", str(screen.images), "--layout", str(screen.layout), "--out", str(out),
                 "--channels", "Hoechst=d0", "--objects", "--pixel-size", "model"]) == 0
    images = pl.read_parquet(out / "images" / "**" / "*.parquet")
    objects = pl.read_parquet(out / "objects" / "**" / "*.parquet")
    assert {"PathName_Hoechst", "FileName_Hoechst", "ImageQuality_FocusScore_Hoechst",
            "Mean_Nuclei_Intensity_MeanIntensity_Hoechst"} <= set(images.columns)
    assert "Intensity_MeanIntensity_Hoechst" in objects.columns
    assert not [c for c in (*images.columns, *objects.columns) if c.endswith("_DNA")]
    wells = pl.read_parquet(out / "analysis" / "wells.parquet")
    assert wells["nuclei_intensity_mean"].drop_nulls().len() > 20  # read from ..._MeanIntensity_Hoechst (96 px frames)
    printed = capsys.readouterr().out
    assert "ImageQuality_FocusScore_Hoechst" in printed  # the frame QC reads the renamed channel's measures
    # a run folder begun with other channels is refused unless --overwrite
    assert main(["--quiet", "segment", str(screen.images), "--out", str(out), "--pixel-size", "model"]) == 2
    assert "channels" in capsys.readouterr().err


def test_bad_channel_options_on_the_command_line_write_nothing(screen, tmp_path, capsys):
    for args in (["--channels", "DNA=d0,Lyso=d9"], ["--channels", "DNA=d0,DNA=d1"], ["--channels", "a-b=d0"],
                 ["--channels", "DNA=d0", "--channel", "0"]):
        assert main(["--quiet", "segment", str(screen.images), "--out", str(tmp_path / "r"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tif", "c01"])
def test_rules_on_marker_readouts_call_the_planted_genes_and_lipa(tmp_path, fmt, capsys):
    """A simulated 3-channel screen, 2 plates: run --channels --objects measures every channel, and rules on the
    marker readouts call exactly the planted marker genes, with the LIPA control wells passing the LMP rule. (The
    small model: the nuclei only need to be found here, and it is 3x faster.)"""
    sim = simulate_screen(tmp_path / "sim", plates=2, fields=2, size=256, seed=4, masks=False, channels=3, fmt=fmt)
    out = tmp_path / "run"
    assert main(["--quiet", "run", str(sim.images), "--layout", str(sim.layout), "--out", str(out), "--objects",
                 "--channels", "DNA=d0,Lyso=d1,Cell=d2", "--pixel-size", "model", "--model", "unet-tiny-int8",
                 "--rule", "lmp=lyso_intensity_fc > 1.2", "--rule", "cell_stain=cell_intensity_fc > 1.4"]) == 0
    objects = pl.read_parquet(out / "objects" / "**" / "*.parquet")
    for channel in ("DNA", "Lyso", "Cell"):
        for feature in ("IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
                        "MedianIntensity"):
            assert f"Intensity_{feature}_{channel}" in objects.columns
    truth = pl.read_csv(sim.truth)
    planted = truth.filter(pl.col("role") == "sample")
    hits = pl.read_csv(out / "analysis" / "hits.csv")
    called = {rule: set(hits.filter(pl.col("hit_rules").str.contains(rule))["gene_symbol"])
              for rule in ("lmp", "cell_stain")}
    assert called["lmp"] == set(planted.filter(pl.col("planted_marker") == "lyso")["gene_symbol"])
    assert called["cell_stain"] == set(planted.filter(pl.col("planted_marker") == "cell")["gene_symbol"])
    controls = pl.read_parquet(out / "analysis" / "controls.parquet")
    lipa = controls.filter(pl.col("control_name") == "LIPA").row(0, named=True)
    assert lipa["lyso_intensity_fc"] > 1.2 and lipa["wells_pass_lmp"] >= 7 and lipa["wells_pass_cell_stain"] == 0
    otp = controls.filter(pl.col("control_name") == "OTP").row(0, named=True)
    assert otp["wells_pass_lmp"] == 0
    assert "Readouts: lyso_intensity = nuclei_mean(Intensity_MeanIntensity_Lyso)" in capsys.readouterr().out


def test_a_bad_marker_frame_fails_its_field_only(screen, tmp_path):
    """A corrupt marker file fails its field at decode, a marker frame of another size at check, each with the
    channel named; every other field is segmented."""
    import shutil

    import tifffile

    images = tmp_path / "images"
    shutil.copytree(screen.images, images)
    lyso = sorted(images.rglob("*d1.tif"))
    lyso[3].write_bytes(b"II*\x00" + b"\x01" * 10)
    tifffile.imwrite(sorted(images.rglob("*d2.tif"))[7], np.zeros((50, 60), np.uint16))
    out = tmp_path / "run"
    assert main(["--quiet", "segment", str(images), "--out", str(out), "--channels", "DNA=d0,Lyso=d1,Cell=d2",
                 "--pixel-size", "model", "--illum", "none"]) == 0
    errors = pl.read_parquet(out / "errors" / "*.parquet").sort("Stage")
    assert errors.select("Stage").to_series().to_list() == ["check", "decode"]
    assert "Cell frame is 60x50" in errors["Error"][0] and errors["Error"][1].startswith("Lyso channel:")
    assert pl.read_parquet(out / "images" / "**" / "*.parquet").height == 382


def test_predict_measures_every_channel_of_a_field(screen, tmp_path):
    import shutil

    folder = tmp_path / "fields"
    folder.mkdir()
    for path in sorted(screen.images.rglob("*_A0[1-3]f00d*.tif")):  # three fields, three channels each
        shutil.copy(path, folder)
    assert main(["--quiet", "predict", str(folder), "--out", str(tmp_path / "p"), "--channels",
                 "DNA=d0,Lyso=d1,Cell=d2", "--pixel-size", "model"]) == 0
    tables = sorted((tmp_path / "p").glob("*_nuclei.csv"))
    assert len(tables) == 3 and all(t.name.endswith("d0_nuclei.csv") for t in tables)
    table = pl.concat([t for t in map(pl.read_csv, tables) if t.height])  # (a field may hold no nucleus)
    assert {"Intensity_MedianIntensity_Lyso", "Intensity_MeanIntensity_Cell", "Intensity_MeanIntensity_DNA"} <= \
        set(table.columns)
    assert table.height > 0 and table["Intensity_MeanIntensity_Lyso"].null_count() == 0
