#!/usr/bin/env python3
"""create -> exec-ready: POST /v1/vms vs a raw libvirt boot of the same template to SSH.

Runs both paths alternately (raw, api, raw, api, ...) so that machine drift cancels out, and
prints medians and p95. The raw path uses the same image, kernel, cmdline and domain XML
builder, but no service: qemu-img + `virsh create` + a plain paramiko loop until `id` runs.

    .venv/bin/python bench/bench_create.py --rounds 5
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

import paramiko

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from app.models import VmPhase, VmRecord  # noqa: E402
from app.sshkeys import generate_keypair, write_private  # noqa: E402
from app.virt.domain_xml import BootFiles, DomainParams, build_domain_xml  # noqa: E402
from bench.common import fmt, machine, stats  # noqa: E402

KEY = "bench-key"
BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": True}
RAW_IP = "172.16.0.250"


def raw_boot(services, workdir: pathlib.Path) -> float:
    """Boot the template with virsh and wait for `id` over SSH; returns seconds."""
    settings = services.settings
    template = services.templates.get(None)
    build = services.templates.current_build(template)
    host_key, client_key = generate_keypair(), generate_keypair()
    vm_dir = workdir / "raw"
    shutil.rmtree(vm_dir, ignore_errors=True)
    vm_dir.mkdir()
    write_private(vm_dir / "hostkey", host_key.private_openssh)
    (vm_dir / "authorized_keys").write_text(client_key.public_openssh + "\n")
    record = VmRecord(id="00000000-0000-4000-8000-0000000000be", name="rds-bench-raw", cpu=1,
                      mem_mb=256, guest_ip=RAW_IP, mac="52:54:00:10:00:fa", allow_ips=(),
                      outbound_internet=False, image_id=template.id, image_path=str(build.path),
                      disk_size_mb=build.disk_size_mb, created_at="", provision_mode="raw",
                      host_key=host_key.public_openssh, phase=VmPhase.STARTING)
    cmdline = (f"{template.kernel_cmdline} rds.ip={RAW_IP}/24 rds.gw={settings.gateway_ip} "
               f"rds.hostname=rds-bench-raw")
    xml = build_domain_xml(template.domain_xml, record, DomainParams(
        accelerator=services.domain_type,
        boot=BootFiles(str(build.kernel), str(build.initrd), cmdline),
        overlay_path=str(vm_dir / "disk.qcow2"), network_name=settings.network_name,
        filter_name="clean-traffic", gateway_ip=str(settings.gateway_ip),
        console_log=str(vm_dir / "console.log"),
        fwcfg_files=(("ssh_host_ed25519_key", str(vm_dir / "hostkey")),
                     ("authorized_keys", str(vm_dir / "authorized_keys")))))
    (vm_dir / "domain.xml").write_text(xml)
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


def api_create(client) -> float:
    started = time.monotonic()
    response = client.post("/v1/vms", json=BODY, headers={"X-API-Key": KEY})
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.json
    deleted = client.delete(f"/v1/vms/{response.json['id']}", headers={"X-API-Key": KEY})
    assert deleted.status_code == 204
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the raw samples here")
    args = parser.parse_args()
    app = create_app({"API_KEY": KEY})
    services = app.extensions["rds"]
    client = app.test_client()
    raw, api = [], []
    with tempfile.TemporaryDirectory(dir=services.settings.storage_root) as tmp:
        for round_no in range(args.rounds):
            raw.append(raw_boot(services, pathlib.Path(tmp)))
            api.append(api_create(client))
            print(f"round {round_no + 1}: raw {raw[-1]:.2f} s, api {api[-1]:.2f} s", flush=True)
    accel = "KVM" if services.domain_type == "kvm" else "TCG"
    raw_s, api_s = stats(raw), stats(api)
    print(f"\nmachine: {machine()}\naccelerator: {accel}")
    print("| path | n | median | p95 | min | max |\n|---|---|---|---|---|---|")
    for name, s in (("raw libvirt boot -> SSH `id`", raw_s), ("POST /v1/vms -> 201", api_s)):
        print(f"| {name} | {s['n']} | {fmt(s['median'])} | {fmt(s['p95'])} | {fmt(s['min'])} "
              f"| {fmt(s['max'])} |")
    print(f"\nratio api/raw (median): {api_s['median'] / raw_s['median']:.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"raw": raw, "api": api}, indent=2))
    services.close()


if __name__ == "__main__":
    main()
