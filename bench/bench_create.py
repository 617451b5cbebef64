#!/usr/bin/env python3
"""create -> exec-ready: a raw libvirt boot of the template vs POST /v1/vms cold, from the
memory snapshot and from the warm pool.

Each round runs every path once (raw, boot, snapshot, pool), so machine drift hits all alike;
medians, p95 and ratios to the raw boot are printed. The raw path uses the same image, kernel,
cmdline and domain XML builder but no service: qemu-img + `virsh create` + a plain paramiko
loop until `id` runs. `boot` and `snapshot` answer 201 only after `id -u` ran in the guest;
for the pool, both the POST alone and POST + the first exec are reported. The memory snapshot
is saved and the pool refilled before the timed part (their cost is printed separately).
`--capacity N` then starts N idle VMs from the snapshot and reports their RSS.

    .venv/bin/python bench/bench_create.py --rounds 5 --capacity 8
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import paramiko

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app import create_app
from app.models import ProvisionMode, VmPhase, VmRecord
from app.sshkeys import generate_keypair, write_private
from app.virt.domain_xml import (BootFiles, DomainParams, build_domain_xml,
                                 kernel_cmdline)
from app.virt.qemu_access import prepare_vm_dir, share_with_qemu
from bench.common import fmt, machine, stats

KEY = "bench-key"
BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": True}
RAW_IP = "172.16.0.250"


def plain_libvirt_nic(xml: str, network: str, guest_ip: str | None) -> str:
    """The NIC as a plain libvirt user writes it: on the network, with libvirt's own
    clean-traffic filter for ``guest_ip`` (libvirt makes, filters and plugs in the tap before
    the boot); no filter when ``guest_ip`` is None."""
    root = ET.fromstring(xml)
    nic = root.find("devices/interface")
    nic.set("type", "network")
    nic.remove(nic.find("target"))
    nic.insert(1, ET.Element("source", {"network": network}))
    if guest_ip is not None:
        filterref = ET.SubElement(nic, "filterref", {"filter": "clean-traffic"})
        ET.SubElement(filterref, "parameter", {"name": "IP", "value": guest_ip})
    return ET.tostring(root, encoding="unicode")


def raw_boot(services, workdir: pathlib.Path) -> float:
    """Boot the template with virsh and wait for `id` over SSH; returns seconds."""
    settings = services.settings
    template = services.templates.get(None)
    build = services.templates.current_build(template)
    host_key, client_key = generate_keypair(), generate_keypair()
    vm_dir = workdir / "raw"
    shutil.rmtree(vm_dir, ignore_errors=True)
    vm_dir.mkdir()
    share_with_qemu(workdir)  # QEMU runs as libvirt-qemu, as for the service's VMs
    sockets = prepare_vm_dir(vm_dir)
    write_private(vm_dir / "hostkey", host_key.private_openssh)
    (vm_dir / "authorized_keys").write_text(client_key.public_openssh + "\n")
    record = VmRecord(id="00000000-0000-4000-8000-0000000000be", name="rds-bench-raw", cpu=1,
                      mem_mb=256, guest_ip=RAW_IP, mac="52:54:00:10:00:fa", allow_ips=(),
                      outbound_internet=False, image_id=template.id, image_path=str(build.path),
                      disk_size_mb=build.disk_size_mb, created_at="",
                      provision_mode=ProvisionMode.BOOT, host_key=host_key.public_openssh,
                      phase=VmPhase.STARTING)
    cmdline = kernel_cmdline(template.kernel_cmdline, services.domain_type,
                             f"rds.ip={RAW_IP}/24 rds.gw={settings.gateway_ip} "
                             f"rds.hostname=rds-bench-raw")
    xml = build_domain_xml(template.domain_xml, record, DomainParams(
        accelerator=services.domain_type,
        boot=BootFiles(str(build.kernel), str(build.initrd), cmdline),
        overlay_path=str(vm_dir / "disk.qcow2"), port="unused",
        console_log=str(vm_dir / "console.log"), identity_socket=str(sockets / "identity.sock"),
        fwcfg_files=(("ssh_host_ed25519_key", str(vm_dir / "hostkey")),
                     ("authorized_keys", str(vm_dir / "authorized_keys")))))
    (vm_dir / "domain.xml").write_text(plain_libvirt_nic(xml, settings.network_name, RAW_IP))
    pkey = paramiko.Ed25519Key.from_private_key_file(str(_write(vm_dir / "client",
                                                                client_key.private_openssh)))
    started = time.monotonic()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(build.disk), str(vm_dir / "disk.qcow2")], check=True, timeout=60)
    subprocess.run(["virsh", "-q", "create", str(vm_dir / "domain.xml")], check=True,
                   timeout=60, capture_output=True)
    try:
        while time.monotonic() - started < 300:
            try:
                client = paramiko.SSHClient()
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # bench only
                sock = socket.create_connection((RAW_IP, 22), timeout=3)
                client.connect(RAW_IP, username="user", pkey=pkey, sock=sock, timeout=5,
                               banner_timeout=5, auth_timeout=5, look_for_keys=False,
                               allow_agent=False)
                _stdin, stdout, _stderr = client.exec_command("id -u", timeout=10)
                if stdout.read().strip() == b"1000":
                    elapsed = time.monotonic() - started
                    client.close()
                    return elapsed
                client.close()
            except (OSError, paramiko.SSHException, EOFError):
                time.sleep(0.3)
        raise RuntimeError("raw boot did not answer in 300 s")
    finally:
        subprocess.run(["virsh", "-q", "destroy", "rds-bench-raw"], timeout=60,
                       capture_output=True)
        shutil.rmtree(vm_dir, ignore_errors=True)


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    write_private(path, text)
    return path


def api_create(client, mode: str, first_exec: bool = False) -> tuple[float, float]:
    """POST /v1/vms with this provisionMode; returns (seconds to 201, seconds to 201 + an
    exec of `true`)."""
    started = time.monotonic()
    response = client.post("/v1/vms", json={**BODY, "provisionMode": mode},
                           headers={"X-API-Key": KEY})
    created = time.monotonic() - started
    assert response.status_code == 201, response.json
    assert response.json["provisionMode"] == mode, response.json
    vm_id = response.json["id"]
    ready = created
    if first_exec:
        ran = client.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"},
                          headers={"X-API-Key": KEY})
        ready = time.monotonic() - started
        assert ran.status_code == 200 and ran.json["exitCode"] == 0, ran.json
    deleted = client.delete(f"/v1/vms/{vm_id}?wait=true", headers={"X-API-Key": KEY})
    assert deleted.status_code == 204
    return created, ready


def capacity(services, client, count: int) -> None:
    """Start `count` idle VMs from the memory snapshot; report RSS and what fits."""
    def available_mib() -> float:
        with open("/proc/meminfo") as handle:
            info = dict(line.split(":", 1) for line in handle)
        return int(info["MemAvailable"].split()[0]) / 1024

    before = available_mib()
    ids = []
    try:
        for _ in range(count):
            response = client.post("/v1/vms", json={**BODY, "provisionMode": "snapshot"},
                                   headers={"X-API-Key": KEY})
            assert response.status_code == 201, response.json
            ids.append(response.json["id"])
        time.sleep(10)  # let them settle idle
        rss = []
        for vm_id in ids:
            name = "rds-" + vm_id.split("-")[0]
            pid = pathlib.Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
            rss.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
        after = available_mib()
        per_vm = (before - after) / count
        print(f"\n{count} idle VMs (1 vCPU, 256 MiB, restored): qemu RSS median "
              f"{sorted(rss)[len(rss) // 2]:.0f} MiB (min {min(rss):.0f}, max {max(rss):.0f}); "
              f"MemAvailable dropped {before - after:.0f} MiB = {per_vm:.0f} MiB per VM")
        print(f"host MemAvailable before: {before:.0f} MiB -> about {before / per_vm:.0f} idle "
              f"VMs of this shape fit in memory (CPU: idle guests use ~0 %)")
    finally:
        for vm_id in ids:
            client.delete(f"/v1/vms/{vm_id}?wait=true", headers={"X-API-Key": KEY})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--capacity", type=int, default=0,
                        help="afterwards start this many idle VMs and report their RSS")
    parser.add_argument("--json", help="write the raw samples here")
    args = parser.parse_args()
    app = create_app({"API_KEY": KEY, "ENABLE_WARM_POOL": "true", "WARM_POOL_TARGET": 1,
                      "WARM_POOL_MAX_VMS": 1, "WARM_POOL_SHAPES": "1x256"})
    services = app.extensions["rds"]
    client = app.test_client()
    started = time.monotonic()
    services.seeds.ensure(BODY["cpu"], BODY["memMb"])
    print(f"memory snapshot ready in {time.monotonic() - started:.1f} s (0 if it existed)")
    samples: dict[str, list[float]] = {"raw": [], "boot": [], "snapshot": [], "pool": [],
                                       "pool+exec": []}
    with tempfile.TemporaryDirectory(dir=services.settings.storage_root) as tmp:
        for round_no in range(args.rounds):
            samples["raw"].append(raw_boot(services, pathlib.Path(tmp)))
            samples["boot"].append(api_create(client, "boot")[0])
            samples["snapshot"].append(api_create(client, "snapshot")[0])
            refill = time.monotonic()
            services.maintainer.refill_pool()
            refill = time.monotonic() - refill
            created, ready = api_create(client, "pool", first_exec=True)
            samples["pool"].append(created)
            samples["pool+exec"].append(ready)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{name} {values[-1]:.3f} s" for name, values in samples.items())
                + f" (pool refill {refill:.1f} s, untimed)", flush=True)
    services.maintainer.drain()
    accel = "KVM" if services.domain_type == "kvm" else "TCG"
    print(f"\nmachine: {machine()}\naccelerator: {accel}")
    raw_median = stats(samples["raw"])["median"]
    print("| path | n | median | p95 | min | max | median / raw |\n|---|---|---|---|---|---|---|")
    names = {"raw": "raw libvirt boot -> SSH `id`", "boot": "POST cold boot -> 201",
             "snapshot": "POST from memory snapshot -> 201",
             "pool": "POST from warm pool -> 201",
             "pool+exec": "POST from warm pool + first exec"}
    for key, label in names.items():
        st = stats(samples[key])
        unit = "ms" if st["median"] < 1 else "s"
        print(f"| {label} | {st['n']} | {fmt(st['median'], unit)} | {fmt(st['p95'], unit)} | "
              f"{fmt(st['min'], unit)} | {fmt(st['max'], unit)} | "
              f"{st['median'] / raw_median:.3f} |")
    if args.capacity:
        capacity(services, client, args.capacity)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(samples, indent=2))
    services.close()


if __name__ == "__main__":
    main()
