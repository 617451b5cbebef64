#!/usr/bin/env python3
"""How much `make load`'s exec comparison moves on its own: an A/A run.

    flock -o /tmp/rds-vm.lock .venv/bin/python bench/compare_noise.py --repeats 3

bench_load.py compares the API with raw paramiko in alternating windows (6 rounds of 12 s,
each after 3 s not counted). Here both sides are the same raw paramiko call (`true`, one
connection per VM, 4 VMs, 16 threads), in the same windows, ``--repeats`` times: the spread of
the "ratio" of two identical sides is the comparison's own noise on this host, the margin a
real API/raw figure needs before it says anything. Also printed: the median of the rounds'
pair ratios (each round's two windows, side by side in time).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.bench_load import alternate
from bench.common import live_server_services, machine, raw_client, raw_run

KEY = "bench-load-key"


def pair_ratios(windows: list[list]) -> list[float]:
    """Per round (two windows in a row), the "api" side's rate over the "raw" side's."""
    rates = [dict([windows[i][:2], windows[i + 1][:2]]) for i in range(0, len(windows), 2)]
    return [pair["api"] / pair["raw"] for pair in rates if pair.get("raw")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    services = live_server_services(KEY)
    report: dict = {"machine": machine(), "args": vars(args), "runs": []}
    with loadgen.vms_on_a_live_server(KEY, 4, "compare-noise-") as (_base, _server, vms):
        raws = [raw_client(services, vm) for vm in vms]
        try:
            def raw_call(index: int) -> None:
                raw_run(raws[index % len(raws)], "true")

            loadgen.throughput(raw_call, args.concurrency, 5)  # warm up
            for repeat in range(args.repeats):
                out = alternate({"raw": raw_call, "api": raw_call}, args.concurrency,
                                args.seconds, args.rounds, args.settle)
                pairs = pair_ratios(out["windows"])
                run = {"ratio": out["ratio"], "median_pairs": statistics.median(pairs),
                       "windows": out["windows"]}
                report["runs"].append(run)
                print(f"A/A {repeat + 1}: ratio {run['ratio']:.3f}, median of pairs "
                      f"{run['median_pairs']:.3f}", flush=True)
        finally:
            for raw in raws:
                raw.close()
    services.close()
    ratios = [run["ratio"] for run in report["runs"]]
    print(f"A/A ratios {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} runs"
          + (f", sd {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
