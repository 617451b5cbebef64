"""bench/bench_load.py's exec comparison: its window order (Thue-Morse) and its sums."""
from __future__ import annotations

import time

from bench.bench_load import window_order


def test_the_windows_follow_the_thue_morse_order():
    assert window_order(1) == ["raw", "api"]
    assert window_order(3) == ["raw", "api", "api", "raw", "api", "raw"]
    assert window_order(0) == []


def test_every_round_has_one_window_per_side_and_six_rounds_end_on_the_api():
    order = window_order(6)
    assert all({order[i], order[i + 1]} == {"raw", "api"} for i in range(0, 12, 2))
    assert (order[0], order[-1]) == ("raw", "api")


def test_a_curved_drift_weighs_on_both_sides_alike_over_eight_windows():
    order = window_order(4)
    for power in (0, 1, 2):  # speed = a + b*i + c*i^2 adds up the same on both sides
        sums = {side: sum(i ** power for i, name in enumerate(order) if name == side)
                for side in ("raw", "api")}
        assert sums["raw"] == sums["api"], power


def test_an_even_number_of_rounds_puts_each_side_first_as_often():
    order = window_order(4)
    firsts = [order[i] for i in range(0, len(order), 2)]
    assert firsts.count("raw") == firsts.count("api") == 2
    assert order.count("raw") == order.count("api") == 4


def test_the_comparison_adds_up_each_side_over_its_windows(monkeypatch):
    """exec_compare with the calls faked: per-second figures of each side over all its
    windows, the ratio, and the windows in order (it once failed on its own window list)."""
    import bench.bench_load as bench_load

    class Closing:
        def close(self) -> None:
            pass
    rates = iter([10, 8, 9, 11])  # raw, api, api, raw
    monkeypatch.setattr(bench_load, "raw_client", lambda _services, _vm: Closing())
    monkeypatch.setattr(bench_load.loadgen, "client", lambda _base, _key: Closing())
    monkeypatch.setattr(bench_load.loadgen, "throughput",
                        lambda _call, _concurrency, seconds, _settle: (next(rates) * seconds,
                                                                       [0.1], []))
    stolen = iter([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0])  # before/after per window
    monkeypatch.setattr(bench_load, "steal_s", lambda: next(stolen))
    out = bench_load.exec_compare(None, "http://x", [{"id": "a"}], 2, 10.0, 2)
    assert out["raw"]["per_s"] == 10.5 and out["api"]["per_s"] == 8.5
    assert out["ratio"] == 8.5 / 10.5
    assert [window[:2] for window in out["windows"]] == [["raw", 10.0], ["api", 8.0],
                                                         ["api", 9.0], ["raw", 11.0]]
    steals = [window[2] for window in out["windows"]]
    assert steals[0] == steals[1] == steals[3] == 0.0 and steals[2] > 0


def test_calls_that_finish_while_the_window_settles_are_not_counted():
    from bench import loadgen

    def call(_index: int) -> None:
        time.sleep(0.05)
    done, latencies, errors = loadgen.throughput(call, 2, 0.4, settle=0.3)
    assert not errors
    # 2 threads x 0.4 s / 0.05 s = 16 in the counted part; the 12 of the settle are not.
    assert 12 <= done <= 18, done
    assert all(latency >= 0.05 for latency in latencies)


def test_an_aa_run_pairs_each_rounds_two_windows_whatever_their_order():
    from bench.compare_noise import pair_ratios
    windows = [["raw", 10.0, 0], ["api", 8.0, 0], ["api", 12.0, 0], ["raw", 10.0, 0]]
    assert pair_ratios(windows) == [0.8, 1.2]
