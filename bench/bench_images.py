#!/usr/bin/env python3
"""images: how long a custom image takes to build, and a create from it next to one from the
default image.

Build: ``POST /v1/images`` (with a files upload: a tiny .deb made here with dpkg-deb, so the
build needs no network) until READY, with the builder run in this process as the maintaining
process would. The setup script installs the package and writes a file. The time includes the
memory snapshot of the new image (a boot of it); the build log's own steps give the breakdown
(its timestamps have a one-second resolution).

Create: ``POST /v1/vms`` → 201 from the default image and from the custom one, alternately
(default, custom, default, ...), both restored from their memory snapshots (the warm pool is
off here); each VM is deleted, untimed. Nothing else is touched: only the images and VMs this
script made are removed.

    .venv/bin/python bench/bench_images.py --builds 3 --creates 7
"""
from __future__ import annotations

import argparse
import io
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app import create_app
from bench.common import fmt, machine, stats

KEY = "bench-key"
BODY = {"cpu": 1, "memMb": 256}
SETUP = "dpkg -i rds-bench_1.0_all.deb\necho built > /etc/rds-bench\n"
STEPS = (("booting a build VM", "boot"), ("running the setup script", "setup"),
         ("sealing", "seal + shutdown + flatten"),
         ("saving the memory snapshot", "memory snapshot"), ("READY", None))


def files_archive() -> bytes:
    """A tar.gz holding a tiny Debian package (installs /usr/local/bin/rds-bench)."""
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "usr/local/bin").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(
            "Package: rds-bench\nVersion: 1.0\nArchitecture: all\nMaintainer: bench <b@b>\n"
            "Description: image build benchmark\n")
        (root / "usr/local/bin/rds-bench").write_text("#!/bin/sh\necho bench\n")
        deb = pathlib.Path(folder) / "rds-bench_1.0_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)],
                       check=True, capture_output=True, timeout=60)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz") as archive:
            archive.add(deb, arcname=deb.name)
        return raw.getvalue()


def breakdown(lines: list[str]) -> dict[str, float]:
    """Seconds per build step, from the build log's ``==> HH:MM:SS`` lines."""
    seen: dict[str, float] = {}
    for line in lines:
        match = re.match(r"==> (\d\d):(\d\d):(\d\d) (.*)", line)
        if match:
            hours, minutes, seconds, text = match.groups()
            for marker, _label in STEPS:
                if text.startswith(marker) and marker not in seen:
                    seen[marker] = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    steps = {}
    for (marker, label), (following, _next) in zip(STEPS, STEPS[1:], strict=False):
        if label and marker in seen and following in seen:
            steps[label] = seen[following] - seen[marker]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=7)
    args = parser.parse_args()
    app = create_app({"TESTING": True, "API_KEY": KEY, "ENABLE_WARM_POOL": "false"})
    services = app.extensions["rds"]
    client = app.test_client()
    headers = {"X-API-Key": KEY}
    services.seeds.ensure(BODY["cpu"], BODY["memMb"])
    archive = files_archive()
    made: list[str] = []
    builds: list[float] = []
    steps: dict[str, list[float]] = {}
    creates: dict[str, list[float]] = {"default": [], "custom": []}
    try:
        for number in range(1, args.builds + 1):
            name = f"bench-{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            response = client.post("/v1/images", headers=headers, json={
                "name": name, "setup": SETUP, "files": True})
            assert response.status_code == 202, response.get_json()
            made.append(name)
            response = client.put(f"/v1/images/{name}/files", data=archive,
                                  headers={**headers, "Content-Type": "application/gzip"})
            assert response.status_code == 202, response.get_json()
            services.image_builder.run_pending()
            builds.append(time.perf_counter() - started)
            image = client.get(f"/v1/images/{name}", headers=headers).get_json()
            lines = client.get(f"/v1/images/{name}/build-log?tail=1000",
                               headers=headers).get_json()["lines"]
            assert image["state"] == "READY" and image["snapshotReady"], (image, lines)
            for label, seconds in breakdown(lines).items():
                steps.setdefault(label, []).append(seconds)
            print(f"build {number}: {fmt(builds[-1])} ({breakdown(lines)}), image "
                  f"{image['sizeMb']} MiB", flush=True)
            if number < args.builds:
                assert client.delete(f"/v1/images/{name}", headers=headers).status_code == 204
        custom = made[-1]
        for number in range(1, args.creates + 1):
            for label, image_id in (("default", "default"), ("custom", custom)):
                started = time.perf_counter()
                response = client.post("/v1/vms", headers=headers,
                                       json={**BODY, "imageId": image_id})
                elapsed = time.perf_counter() - started
                vm = response.get_json()
                assert response.status_code == 201, vm
                assert vm["provisionMode"] == "snapshot", vm
                creates[label].append(elapsed)
                assert client.delete(f"/v1/vms/{vm['id']}?wait=true",
                                     headers=headers).status_code == 204
            print(f"create round {number}: default {fmt(creates['default'][-1])}, custom "
                  f"{fmt(creates['custom'][-1])}", flush=True)
    finally:
        for name in made:
            client.delete(f"/v1/images/{name}", headers=headers)
        services.close()
    report(builds, steps, creates)


def report(builds: list[float], steps: dict[str, list[float]],
           creates: dict[str, list[float]]) -> None:
    print(f"\n{machine()}\n")
    print("| what | n | median | p95 | min | max |")
    print("|---|---|---|---|---|---|")
    row = stats(builds)
    print(f"| image build, POST → READY (with its memory snapshot) | {row['n']} | "
          f"{fmt(row['median'])} | {fmt(row['p95'])} | {fmt(row['min'])} | "
          f"{fmt(row['max'])} |")
    for label, samples in steps.items():
        row = stats(samples)
        print(f"| ... {label} (build log, 1 s resolution) | {row['n']} | {row['median']:.0f} s "
              f"| {row['p95']:.0f} s | {row['min']:.0f} s | {row['max']:.0f} s |")
    default = stats(creates["default"])["median"]
    for label, text in (("default", "`POST /v1/vms` default image, memory snapshot → 201"),
                        ("custom", "`POST /v1/vms` custom image, memory snapshot → 201")):
        row = stats(creates[label])
        print(f"| {text} | {row['n']} | {fmt(row['median'])} | {fmt(row['p95'])} | "
              f"{fmt(row['min'])} | {fmt(row['max'])} |")
    print(f"\ncustom / default create median: {stats(creates['custom'])['median'] / default:.2f}")


if __name__ == "__main__":
    main()
