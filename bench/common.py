"""Shared bits of the benchmark scripts: timing stats and the machine description."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95_index = max(0, min(len(ordered) - 1, round(0.95 * (len(ordered) - 1))))
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": ordered[p95_index],
            "min": ordered[0], "max": ordered[-1]}


def fmt(value: float, unit: str = "s") -> str:
    return f"{value * 1000:.0f} ms" if unit == "ms" else f"{value:.2f} s"


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    model = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()[0]
    return (f"{platform.node()}: {model}, {cores} cores, {mem_kb / 1024 / 1024:.0f} GiB, "
            f"{platform.system()} {platform.release()}, {qemu}")
