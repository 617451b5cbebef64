"""bench/bench_remote.py's pure helpers: the figures and tables it prints (issue 17), and the
rig's HOSTS entry both it and the rig tests give a manager."""
from __future__ import annotations

import json

from bench.bench_remote import (create_table, duration, exec_table, markdown_table, rotated,
                                summarize)
from tests.integration.two_host_rig import SecondHost


def test_summarize_is_nearest_rank():
    samples = [float(value) for value in range(20, 0, -1)]  # 20 .. 1, unordered on purpose
    assert summarize(samples) == {"n": 20, "p50": 10.0, "p95": 19.0, "min": 1.0, "max": 20.0}
    assert summarize([0.5]) == {"n": 1, "p50": 0.5, "p95": 0.5, "min": 0.5, "max": 0.5}
    assert summarize([]) == {"n": 0, "p50": 0.0, "p95": 0.0, "min": 0.0, "max": 0.0}


def test_rotated_gives_each_path_each_place_in_turn():
    paths = ["boot", "snapshot", "remote"]
    assert [rotated(paths, turn) for turn in range(4)] == [
        ["boot", "snapshot", "remote"], ["snapshot", "remote", "boot"],
        ["remote", "boot", "snapshot"], ["boot", "snapshot", "remote"]]
    assert rotated([], 3) == []


def test_duration_is_ms_below_a_second():
    assert [duration(value) for value in (0.0123, 0.9994, 1.0, 15.678)] == [
        "12 ms", "999 ms", "1.00 s", "15.68 s"]


def test_markdown_table():
    assert markdown_table(("a", "b"), [(1, "x"), (2.5, "")]) == (
        "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |")


def test_create_table_has_a_row_per_path():
    table = create_table({
        "local cold boot": {"created": [15.0, 14.0, 16.0], "ready": [15.1, 14.1, 16.2],
                            "deleted": [0.4, 0.5, 0.6]},
        "remote (h2) cold boot": {"created": [17.5], "ready": [17.7], "deleted": [1.2]}})
    lines = table.splitlines()
    assert lines[0].startswith("| path | n | → 201 p50 | → 201 p95 |")
    assert lines[2] == ("| local cold boot | 3 | 15.00 s | 16.00 s | 14.00 s | 16.00 s | "
                        "15.10 s | 16.20 s | 500 ms |")
    assert lines[3] == ("| remote (h2) cold boot | 1 | 17.50 s | 17.50 s | 17.50 s | "
                        "17.50 s | 17.70 s | 17.70 s | 1.20 s |")


def test_exec_table_gives_throughput_per_second_of_the_window():
    table = exec_table({"local": {"sequential": [0.1, 0.2, 0.3], "calls": 150,
                                  "window_s": 15.0, "loaded": [0.5, 0.8], "errors": 0},
                        "remote (h2)": {"sequential": [0.2], "calls": 0, "window_s": 0,
                                        "loaded": [], "errors": 3}}, 8, 15.0)
    lines = table.splitlines()
    assert "throughput (8 threads, 15 s)" in lines[0]
    assert lines[2] == "| local | 3 | 200 ms | 300 ms | 300 ms | 10.0/s | 500 ms | 800 ms | 0 |"
    assert lines[3] == "| remote (h2) | 1 | 200 ms | 200 ms | 200 ms | 0.0/s | 0 ms | 0 ms | 3 |"


def test_the_rigs_hosts_setting_names_its_uri_and_subnet():
    rig = SecondHost()
    assert json.loads(rig.hosts_setting()) == [
        {"name": "h2", "uri": "qemu+tcp://10.210.0.2/system", "guestCidr": "172.16.1.0/24"}]
    assert rig.hosts_entry("h3", maxVms=1) == {
        "name": "h3", "uri": "qemu+tcp://10.210.0.2/system", "guestCidr": "172.16.1.0/24",
        "maxVms": 1}
