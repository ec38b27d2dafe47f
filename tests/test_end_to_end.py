"""The README's promise: the demo's simulated screen, segmented by the shipped U-Net, yields the planted hits.

This is the slow test (a few minutes on 2 cores): it runs exactly what `nucleiscreen demo` runs.
"""

import polars as pl
import pytest

from nucleiscreen.demo import demo
from nucleiscreen.simulate import PLANTED


@pytest.mark.slow
def test_demo_calls_the_planted_hits_and_only_them(tmp_path, capsys):
    result = demo(tmp_path / "demo", quiet=True)
    out = capsys.readouterr().out
    assert result["planted_called"] == sorted(PLANTED)
    assert result["neutral_called"] == []
    hits = result["hits"]
    rules = dict(zip(hits["gene_symbol"], hits["hit_rules"]))
    for gene in ("FBXO5", "CCNA2"):
        assert "reduced_count_enlarged_nuclei" in rules[gene]
    for gene in ("UBB", "POLR2A"):
        assert "strong_loss" in rules[gene]
    # positive controls are reported, with their fold changes, as controls and not as hits
    controls = result["controls"].filter(pl.col("role") == "positive")
    assert sorted(controls["control_name"]) == ["KIF11", "PLK1"]
    assert (controls["count_fc"] < 0.5).all()
    assert not set(hits["gene_symbol"]) & {"PLK1", "KIF11", "OTP", "LIPA"}
    assert "FBXO5" in out and "PLK1" in out and "report.html" in out
    assert (tmp_path / "demo" / "run" / "analysis" / "report.html").stat().st_size > 10_000
