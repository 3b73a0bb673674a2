"""The benchmark's timing harness: each timed block starts once the process's other threads are idle.

Thread pools of the peers (TVM, onnxruntime, OpenBLAS) spin after a call; a block timed while they spin shares
the 2 cores with them (measured: a parallel tvm_gru step 60x slower right after an onnxruntime block).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_wait_until_quiet_waits_for_a_spinning_thread():
    spinner = threading.Thread(target=_spin, args=(0.4,))
    spinner.start()
    try:
        waited = bench.wait_until_quiet(window_s=0.03, max_s=3.0)
    finally:
        spinner.join()
    assert waited >= 0.3, f"returned after {waited:.3f} s while another thread was still spinning"
    assert waited < 2.0


def test_wait_until_quiet_returns_soon_when_idle():
    assert bench.wait_until_quiet(window_s=0.03, max_s=3.0) < 0.5


def test_time_interleaved_reports_every_peer():
    res = bench.time_interleaved({"a": lambda: sum(range(100)), "b": lambda: None}, rounds=3, batch_s=0.002)
    assert set(res) == {"a", "b"}
    for median, best, n in res.values():
        assert n == 3 and 0 < best <= median
    assert res["a"][0] > res["b"][0]  # summing 100 numbers costs more than nothing


def test_time_interleaved_keeps_the_rounds_for_paired_ratios():
    samples = {}
    res = bench.time_interleaved({"a": lambda: sum(range(1000)), "b": lambda: None}, rounds=3, batch_s=0.002,
                                 samples=samples)
    assert [len(samples[k]) for k in ("a", "b")] == [3, 3]
    assert res["a"][0] == sorted(samples["a"])[1]  # the median is taken over the same per-round times
    # Per-round ratios, then their median: the round where both peers were slow does not skew it.
    assert bench.paired_ratio([2.0, 40.0, 6.0], [1.0, 20.0, 2.0]) == 2.0
    assert bench.paired_ratio(samples["a"], samples["b"]) > 1.0
