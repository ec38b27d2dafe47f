"""The benchmarks run and report what they claim to measure (their speed figures are not asserted: shared machines
are noisy, and speed is measured by running them, not by the tests)."""

import numpy as np

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
