"""Real libvirt, real guests, real HTTP API (Flask test client on the real app).

Boots are expensive on TCG hosts (~15 s each on 2 cores), so VMs are shared per module where
the tests allow it. Every VM a test creates is registered and deleted at the end of the
session, even when the test failed half-way.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import leak_inventory
from app import create_app
from app.errors import VmNotFound
from app.models import VmPhase, VmRole
from app.virt.domain_xml import port_name
from app.virt.metadata_xml import parse_metadata

REPO = Path(__file__).resolve().parents[2]
API_KEY = "integration-test-key"
HEADERS = {"X-API-Key": API_KEY}
SEED_BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": True}
BRIDGE_IP = "172.16.0.1"  # the host's address on the guest bridge (this machine)


class Api:
    """The HTTP API through the Flask test client, remembering every VM it created."""

    def __init__(self, app: t.Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.created: list[str] = []

    def request(self, method: str, path: str, **kwargs: t.Any):
        headers = {**HEADERS, **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def create_vm(self, body: dict | None = None, expect: int = 201) -> dict:
        response = self.request("POST", "/v1/vms", json=body or SEED_BODY)
        if response.status_code == 201:
            self.created.append(response.json["id"])
        assert response.status_code == expect, response.json
        return response.json

    def delete_vm(self, vm_id: str, timeout: float = 60) -> None:
        """DELETE answers once the VM is off; then wait until its domain is gone too, so
        that the next test starts from a settled host."""
        response = self.request("DELETE", f"/v1/vms/{vm_id}")
        assert response.status_code in (204, 404), response.json
        hypervisor = self.app.extensions["rds"].hypervisor
        deadline = time.monotonic() + timeout
        while True:
            try:
                hypervisor.get_domain(vm_id)
            except VmNotFound:
                return
            assert time.monotonic() < deadline, f"VM {vm_id} was not removed"
            time.sleep(0.1)

    def cleanup(self) -> None:
        for vm_id in self.created:
            try:
                self.delete_vm(vm_id)
            except Exception as exc:  # noqa: BLE001 - keep cleaning the others
                print(f"cleanup of VM {vm_id} failed: {exc}")


@pytest.fixture(scope="session")
def app():
    application = create_app({"TESTING": True, "API_KEY": API_KEY})
    yield application
    application.extensions["rds"].close()


@pytest.fixture(scope="session")
def services(app):
    return app.extensions["rds"]


@pytest.fixture(scope="session", autouse=True)
def memory_snapshot(services):
    """The seed shape's memory snapshot, saved once: the suite's VMs are restored from it (the
    fast path) unless a test asks for ``provisionMode: "boot"``."""
    return services.seeds.ensure(SEED_BODY["cpu"], SEED_BODY["memMb"])


@pytest.fixture(scope="session")
def api(app, services):
    client = Api(app)
    yield client
    client.cleanup()
    wait_for_deletes(services)
    # Tests that undefine domains behind the service's back leave their filters, ipsets and
    # disks to the orphan sweep; then nothing of this suite may be left on the host.
    services.remove_orphans(min_age_s=0)
    left = [info.name for info in services.hypervisor.list_domains()
            if getattr(parse_metadata(info.xml), "role", None) is not VmRole.SEED]
    assert not left, f"the suite left VMs behind: {left}"
    sets = services.vms.ipsets.vm_names() - {info.name for info in
                                             services.hypervisor.list_domains()}
    assert not sets, f"the suite left ipsets behind: {sets}"
    ports = {port_name(info.name) for info in services.hypervisor.list_domains()}
    taps = services.vms.ports.taps.names() - ports
    assert not taps, f"the suite left taps behind: {taps}"
    bindings = set(services.hypervisor.filter_binding_ports()) - ports
    assert not bindings, f"the suite left nwfilter bindings behind: {bindings}"




def wait_for_deletes(services: t.Any, timeout: float = 60) -> None:
    """A DELETE answers once the VM is off; wait until every VM being deleted is gone."""
    deadline = time.monotonic() + timeout
    while True:
        deleting = [info.name for info in services.hypervisor.list_domains()
                    if getattr(parse_metadata(info.xml), "phase", None) is VmPhase.DELETING]
        if not deleting:
            return
        assert time.monotonic() < deadline, f"deletes did not finish: {deleting}"
        time.sleep(0.2)


def wait_until_undefined(name: str, timeout: float = 30) -> None:
    """Wait until libvirt no longer knows the domain ``name`` (a delete finished)."""
    deadline = time.monotonic() + timeout
    while name in virsh("list", "--all", "--name").stdout.split():
        assert time.monotonic() < deadline, f"{name} is still defined"
        time.sleep(0.2)


def guest_sh(services: t.Any, vm_id: str, command: str, timeout: float = 60) -> str:
    """Run a shell command in the guest as the sandbox user; returns stdout."""
    result = services.vms.guest(vm_id).run(command, timeout=timeout)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def rds_state() -> tuple[set[str], ...]:
    """Domains, filters, filter bindings and taps of this service on the host."""
    domains = {n for n in virsh("list", "--all", "--name").stdout.split() if n.startswith("rds-")}
    filters = {line.split()[1] for line in virsh("nwfilter-list").stdout.splitlines()
               if len(line.split()) > 1 and line.split()[1].startswith("rds-")}
    bindings = {line.split()[0] for line in virsh("nwfilter-binding-list").stdout.splitlines()
                if line.split() and line.split()[0].startswith("rds-")}
    taps = {line.split(":")[1].strip() for line in subprocess.run(
        ["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True,
        timeout=10).stdout.splitlines() if line.split(":")[1].strip().startswith("rds-")}
    return domains, filters, bindings, taps


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def shared_vm(api):
    """One RUNNING VM (the seed's shape) for every test that only runs things in it."""
    created = api.create_vm(SEED_BODY)
    yield created
    api.delete_vm(created["id"])


def exec_ok(api: Api, vm_id: str, cmd: str, **extra: t.Any) -> dict:
    """POST /exec and insist on exit code 0; returns the response body."""
    response = api.request("POST", f"/v1/vms/{vm_id}/exec", json={"cmd": cmd, **extra})
    assert response.status_code == 200, response.json
    assert response.json["exitCode"] == 0, response.json
    return response.json


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the name is http.server's API
        body = b"hello from the bridge"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def bridge_listener():
    """An HTTP server on the host bridge (never any other address); yields its port."""
    server = http.server.ThreadingHTTPServer((BRIDGE_IP, 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def connects(api: Api, vm: dict, host: str, port: int) -> bool:
    """Whether the guest can open a TCP connection to host:port (asked from inside)."""
    response = api.request("POST", f"/v1/vms/{vm['id']}/exec", json={
        "cmd": f"timeout 4 bash -c 'exec 3<>/dev/tcp/{host}/{port}' && echo OPEN || echo SHUT"})
    assert response.status_code == 200, response.json
    return response.json["stdout"].strip() == "OPEN"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# deploy/gunicorn.conf.py without its hooks that sweep orphans, run the maintainer (memory
# snapshots, warm pool) or drain the pool: for a live server that must leave the rest of this
# libvirtd alone (other test runs may share it).
NO_UPKEEP_CONFIG = f"""
exec(compile(open({str(REPO / "deploy" / "gunicorn.conf.py")!r}).read(), "gunicorn.conf.py",
             "exec"))
del on_starting, post_worker_init, on_exit
"""


def no_upkeep_config(directory: Path) -> Path:
    """Write :data:`NO_UPKEEP_CONFIG` into ``directory``; pass it as ``-c`` to live_server."""
    config = directory / "gunicorn.conf.py"
    config.write_text(NO_UPKEEP_CONFIG)
    return config


@contextlib.contextmanager
def live_server(env: dict[str, str], *serve_args: str,
                output: int | t.IO[str] | None = subprocess.PIPE,
                ) -> t.Iterator[tuple[str, subprocess.Popen]]:
    """``python -m app.cli serve`` (gunicorn with deploy/gunicorn.conf.py, as ``make run``
    starts it) on a free loopback port with ``env`` on top of this environment; yields its base
    URL and process once it answers, and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", *serve_args],
                               cwd=REPO, env={**os.environ, "PORT": str(port), **env},
                               stdout=output, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/openapi.json", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    out = process.communicate(timeout=10)[0] if output else ""
                    raise AssertionError(f"server did not start: {out}") from None
                time.sleep(0.3)
        yield base, process
    finally:
        stop_process(process, grace=30)


def kill_service(process: subprocess.Popen, wait_s: float = 60) -> None:
    """SIGKILL a live server's gunicorn master (a crash), then wait until its workers, orphans
    now, have exited too (they notice within seconds; until then they hold what they hold,
    such as the host's maintenance lock)."""
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                             text=True, timeout=10).stdout.split()
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + wait_s
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "the killed service's workers did not exit"
        time.sleep(0.2)


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not ended after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


RDS_API_KEY = "rds-client-test-key"


@pytest.fixture(scope="module")
def rds_server(tmp_path_factory: pytest.TempPathFactory,
               services: t.Any) -> t.Iterator[tuple[str, str]]:
    """A live gunicorn, as ``make run`` starts it, for the SDK and ``rds`` CLI tests; yields
    its base URL and API key. Its output goes to a file (a pipe nobody reads would fill up
    and stall it); the path is printed for a failing run. One per test module: it becomes the
    host's maintainer (reaper, image builder, webhook deliveries), which the tests of other
    modules must be able to be themselves."""
    log_path = tmp_path_factory.mktemp("rds-server") / "server.log"
    print(f"rds_server log: {log_path}")
    with log_path.open("w") as log, live_server({"API_KEY": RDS_API_KEY, "WEB_WORKERS": "2"},
                                               output=log) as (base, process):
        baseline = warmed_up_worker_fds(base, RDS_API_KEY, process)
        yield base, RDS_API_KEY
        # A DELETE answers once the VM is off and the server finishes it in the background:
        # not a server this fixture is about to stop (a VM left `deleting` with no maintainer
        # after it to finish it, seen when the SDK module ran last).
        wait_for_deletes(services)
        assert_worker_fds_back_to(baseline, process)


# What a worker may hold open beyond its warmed-up count when idle: descriptors it opens
# once, on first use, that no warm-up request reaches (an exec's or a download's).
WORKER_FD_SLACK = 4


def warmed_up_worker_fds(base: str, api_key: str, process: subprocess.Popen,
                         limit_s: float = 90) -> dict[int, int]:
    """Send the workers reads (health, list, stats: libvirt, the store, the metrics files are
    open after that) until every worker has served some and its count of open descriptors
    stopped changing, then return those counts.

    Which worker accepts a connection is up to the kernel: one round of reads can all land on
    one worker (or on one that was ready first), and a worker that served nothing would be
    counted before its lazily opened descriptors (metrics files, libvirt) exist, which made
    the check after the module fail on a worker that was only warmed up later (seen in CI)."""
    request = urllib.request.Request(base + "/v1/vms", headers={"X-API-Key": api_key})

    def read(_n: int) -> None:
        for url in (base + "/healthz", request, base + "/readyz"):
            with urllib.request.urlopen(url, timeout=30) as answer:
                answer.read()

    def served(pid: int) -> bool:
        # prometheus-client's multiprocess files are named after the worker's pid and are
        # opened by the first request the worker counts.
        return any(target.endswith(f"_{pid}.db") for target in leak_inventory.open_fds(pid))

    deadline = time.monotonic() + limit_s
    counts: dict[int, int] = {}
    while True:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(read, range(32)))
        time.sleep(6)  # past gunicorn's keep-alive: the warm-up's connections are closed
        pids = leak_inventory.worker_pids(process.pid)
        previous, counts = counts, {pid: len(leak_inventory.countable_fds(pid)) for pid in pids}
        if pids and all(served(pid) for pid in pids) and counts == previous:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not warmed up in {limit_s} s: {counts} "
                                 f"(before: {previous})")


def assert_worker_fds_back_to(baseline: dict[int, int], process: subprocess.Popen,
                              settle_s: float = 20) -> None:
    """Once a module's VMs are gone and its clients closed, each worker that was there at
    the start holds about as many descriptors as after its warm-up: SSH sessions, sockets,
    files and pipes of finished calls are closed (a leak would grow with every call)."""
    deadline = time.monotonic() + settle_s
    while True:
        grown = {pid: (count, len(leak_inventory.countable_fds(pid)))
                 for pid, count in baseline.items() if Path(f"/proc/{pid}").exists()}
        grown = {pid: counts for pid, counts in grown.items()
                 if counts[1] > counts[0] + WORKER_FD_SLACK}
        if not grown:
            return
        if time.monotonic() > deadline:
            details = {pid: leak_inventory.countable_fds(pid) for pid in grown}
            raise AssertionError(f"workers' descriptors grew (before, after): {grown}; "
                                 f"now open: {details}")
        time.sleep(1)
