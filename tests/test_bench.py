"""The benchmarks run and report what they claim to measure (their speed figures are not asserted: shared machines
are noisy, and speed is measured by running them, not by the tests)."""

import numpy as np
import pytest

from nucleiscreen.bench.host import ReplayBackend
from nucleiscreen.bench.host import main as bench_host


def test_bench_host_reports_both_modes_on_one_core_and_all():
    result = bench_host(frames=24, size=128, repeats=1)
    assert set(result["modes"]) == {"summary", "objects"}
    for mode in result["modes"].values():
        assert mode["fps_1_core"] > 0 and mode["fps_per_core"] > 0 and mode["scaling"] > 0


def test_replay_backend_returns_each_frames_recorded_map():
    frames = [np.full((4, 5), v, np.uint16) for v in (1, 2)]
    maps = {f[0].tobytes(): np.full((4, 5), k, np.uint8) for k, f in enumerate(frames)}
    backend = ReplayBackend(maps)
    out = backend.collect_raw(backend.submit_raw(frames[::-1]))
    assert out.shape == (2, 4, 5) and out[0, 0, 0] == 1 and out[1, 0, 0] == 0


def test_bench_cpu_puts_the_three_cpu_paths_side_by_side(capsys):
    from nucleiscreen.bench.cpu import VAL, main

    if not (VAL / "images").is_dir():
        pytest.skip("the lab's validation frames are not in ../shared/data")
    rows = main(frames=1, repeats=1)
    small, int8 = "onnxruntime unet-small (FP32)", "onnxruntime unet-small-int8 (INT8"
    int8 = next(k for k in rows if k.startswith(int8))
    assert list(rows)[0] == "classic (Otsu + watershed)" and small in rows
    assert sum("the CPU default" in k for k in rows) == 1
    assert rows["classic (Otsu + watershed)"]["x_classic"] == 1.0
    for row in rows.values():
        assert row["core_s_per_frame"] > 0 and 0 < row["f1_0.5"] <= 1
    # the INT8 variant keeps the FP32 model's accuracy (on the whole validation set: within 0.002)
    assert abs(rows[int8]["f1_0.5"] - rows[small]["f1_0.5"]) <= 0.02
    assert f"| {int8} |" in capsys.readouterr().out


def test_bench_quick_runs_the_whole_suite_and_checks_the_backends_agree(tmp_path, capsys):
    import json

    from nucleiscreen.cli import main

    assert main(["--quiet", "bench", "--quick", "--out", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {"model", "decode", "backends", "latency", "cpu", "stages", "pipeline", "host"} <= set(results)
    assert results["stages"]["path_ms"] > 0 and "engine_cpu_ms" in results["stages"]
    int8 = results["latency"]["onnxruntime unet-small-int8, batch 2"]
    assert int8["p95_ms"] >= int8["p50_ms"] > 0
    assert results["model"]["parameters"] == 1_942_707
    assert results["backends"]["onnxruntime unet-small"]["same_model"] == 1.0
    assert all(v["same_model"] >= 0.999 for v in results["backends"].values() if v["precision"] == "fp32")
    assert results["backends"]["onnxruntime unet-small-int8"]["fp32"] > 0.95
    assert "## host" in (tmp_path / "b" / "bench.md").read_text()


def test_identity_tells_runs_apart_by_content(tmp_path, capsys):
    """bench/identity.py: the same results under other part names are identical; a changed value is not."""
    import polars as pl

    from nucleiscreen.bench.identity import main as identity

    for run, value, part in (("a", 1, "part-aaaa-00001"), ("b", 1, "part-bbbb-00007"), ("c", 2, "part-cccc-00001")):
        folder = tmp_path / run / "images" / "plate=P"
        folder.mkdir(parents=True)
        pl.DataFrame({"ImageNumber": [2, 1], "Count_Nuclei": [value, 5]}).write_parquet(folder / f"{part}.parquet")
    assert identity([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert identity([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "different: images" in capsys.readouterr().out
