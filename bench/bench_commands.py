#!/usr/bin/env python3
"""exec / run-ts / file transfer: the API path vs the raw SSH path, on one VM, alternating.

    .venv/bin/python bench/bench_commands.py

- exec `true`: POST /exec vs paramiko exec_command on an open connection
- run-ts `console.log(2+2)`: POST /run-ts vs `deno run` of the same file over SSH
- 20 MiB: upload + download via the API (tar.gz) vs SFTP put + get of the same bytes, with
  paramiko's default cipher and with the API's (AES-GCM)
"""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys
import tarfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app import create_app
from app.guestssh import GuestTransport
from bench.common import fmt, machine, raw_client, raw_run, stats

KEY = "bench-key"
H = {"X-API-Key": KEY}
SIZE = 20 * 1024 * 1024


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exec-rounds", type=int, default=30)
    parser.add_argument("--ts-rounds", type=int, default=10)
    parser.add_argument("--transfer-rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of quiet before each run-ts sample (API and raw alike): "
                             "after an API run the guest starts the next warm Deno in the "
                             "background, which must not slow the raw sample that follows")
    args = parser.parse_args()
    app = create_app({"API_KEY": KEY, "MAX_UPLOAD_BYTES": 64 * 1024 * 1024})
    services = app.extensions["rds"]
    api = app.test_client()
    created = api.post("/v1/vms", headers=H, json={"cpu": 1, "memMb": 256})
    assert created.status_code == 201, created.json
    vm = created.json
    results: dict[str, dict[str, list[float]]] = {}
    try:
        ssh = raw_client(services, vm)
        sftp = ssh.open_sftp()
        # The API's guest connections prefer AES-GCM (app/guestssh.py); a plain paramiko
        # client negotiates aes128-ctr + hmac-sha2-256. Both raw variants are measured.
        ssh_gcm = raw_client(services, vm, transport_factory=GuestTransport)
        sftp_gcm = ssh_gcm.open_sftp()
        vm_path = f"/v1/vms/{vm['id']}"

        def api_exec():
            response = api.post(f"{vm_path}/exec", headers=H, json={"cmd": "true"})
            assert response.status_code == 200 and response.json["exitCode"] == 0

        def api_ts():
            response = api.post(f"{vm_path}/run-ts", headers=H,
                                json={"code": "console.log(2+2)"})
            assert response.json["stdout"] == "4\n", response.json

        raw_run(ssh, "printf 'console.log(2+2)' > /workspace/bench.ts")
        raw_ts_command = ("cd /workspace && DENO_DIR=/var/tmp/rds-deno deno run --quiet "
                          "--no-prompt bench.ts")
        payload = os.urandom(SIZE)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
            info = tarfile.TarInfo("blob.bin")
            info.size = SIZE
            tar.addfile(info, io.BytesIO(payload))
        archive_bytes = archive.getvalue()

        def api_transfer():
            up = api.post(f"{vm_path}/files/upload?dest=/workspace/xfer", headers=H,
                          data=archive_bytes, content_type="application/gzip")
            assert up.status_code == 204, up.json
            down = api.get(f"{vm_path}/files/download?path=/workspace/xfer/blob.bin", headers=H)
            assert down.status_code == 200 and len(down.data) > SIZE
            down.close()  # a streamed answer holds a long-call slot until it is closed

        def raw_transfer(client=sftp):
            client.putfo(io.BytesIO(archive_bytes), "/workspace/raw.tar.gz")
            out = io.BytesIO()
            client.getfo("/workspace/raw.tar.gz", out)
            assert out.tell() == len(archive_bytes)

        plan = [("exec `true`", api_exec, lambda: raw_run(ssh, "true"), args.exec_rounds, 0),
                ("run-ts `console.log(2+2)`", api_ts,
                 lambda: raw_run(ssh, raw_ts_command), args.ts_rounds, args.settle),
                ("upload+download 20 MiB", api_transfer, raw_transfer, args.transfer_rounds,
                 0),
                ("upload+download 20 MiB, raw with AES-GCM", api_transfer,
                 lambda: raw_transfer(sftp_gcm), args.transfer_rounds, 0)]
        for name, api_fn, raw_fn, rounds, settle in plan:
            api_fn(), raw_fn()  # warm both paths once
            samples = {"api": [], "raw": []}
            for _ in range(rounds):
                time.sleep(settle)
                samples["raw"].append(timed(raw_fn))
                time.sleep(settle)
                samples["api"].append(timed(api_fn))
            results[name] = samples
            print(f"{name}: done", flush=True)
        ssh.close()
        ssh_gcm.close()
    finally:
        deleted = api.delete(f"/v1/vms/{vm['id']}?wait=true", headers=H)
        services.close()
        assert deleted.status_code == 204, deleted.json

    print(f"\nmachine: {machine()}\naccelerator: "
          f"{'KVM' if services.domain_type == 'kvm' else 'TCG'}")
    print("| operation | n | API median | API p95 | raw median | raw p95 | API/raw |")
    print("|---|---|---|---|---|---|---|")
    for name, samples in results.items():
        a, r = stats(samples["api"]), stats(samples["raw"])
        print(f"| {name} | {a['n']} | {fmt(a['median'], 'ms')} | {fmt(a['p95'], 'ms')} | "
              f"{fmt(r['median'], 'ms')} | {fmt(r['p95'], 'ms')} | "
              f"{a['median'] / r['median']:.2f}x |")
    for name in ("upload+download 20 MiB", "upload+download 20 MiB, raw with AES-GCM"):
        xfer = stats(results[name]["api"])["median"]
        raw_xfer = stats(results[name]["raw"])["median"]
        print(f"\n{name}: throughput API {2 * SIZE / xfer / 2**20:.1f} MiB/s, raw SFTP "
              f"{2 * SIZE / raw_xfer / 2**20:.1f} MiB/s (API/raw {raw_xfer / xfer:.2f})")


if __name__ == "__main__":
    main()
