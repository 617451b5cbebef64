"""Load against a live server: client threads over HTTP (httpx), the workers' resources from
/proc, /healthz latency, burst creates. Shared by bench_load.py, bench_density.py and
tests/integration/test_load_density.py; nothing here imports the app.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import secrets
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HTTP_TIMEOUT_S = 180.0
CREATE_BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"]}
BLOB_BYTES = 256 * 1024
# The load is closed-loop (each thread sends its next call at once) on guests that share the
# host's cores: a call's latency is mostly its guest's CPU share, so commands get the longest
# timeout the API allows (MAX_EXEC_TIMEOUT_MS' default) rather than the 30 s default.
COMMAND_TIMEOUT_MS = 120_000
State = t.TypeVar("State")
Item = t.TypeVar("Item")


def percentile(samples: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


# The server ###############################################################################

def server_env(key: str, max_vms: int) -> dict[str, str]:
    """A live server's settings for load: room for ``max_vms`` VMs, all restored from the
    memory snapshot (warm pool off). The disk budget is overcommitted on purpose: idle VMs
    write a few MiB of their 4 GiB."""
    return {"API_KEY": key, "MAX_VMS": str(max_vms), "ENABLE_WARM_POOL": "false",
            "DISK_BUDGET_MB": str(max_vms * 4096 + 200_000)}


def server_log(prefix: str) -> Path:
    """Where the live server's output goes: ``server.log`` in a new temporary directory (said
    on stdout)."""
    path = Path(tempfile.mkdtemp(prefix=prefix)) / "server.log"
    print(f"server log: {path}", flush=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(env: dict[str, str], log_path: Path) -> t.Iterator[tuple[str, subprocess.Popen]]:
    """``python -m app.cli serve`` (gunicorn with deploy/gunicorn.conf.py, as ``make run``
    serves it) on a free loopback port, its output in ``log_path``; yields the base URL and
    the master process once /openapi.json answers, and stops it (SIGTERM) afterwards."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO,
                                   env={**os.environ, "PORT": str(port), **env},
                                   stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(base + "/openapi.json", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the server did not start; see {log_path}")
                time.sleep(0.3)
            yield base, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=HTTP_TIMEOUT_S)


# The workers' resources ###################################################################

@dataclasses.dataclass(frozen=True)
class ProcSample:
    fds: int
    threads: int
    rss_mib: float


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn master's children (its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
            pids.append(int(entry.name))
    return sorted(pids)


def sample(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return ProcSample(fds=len(os.listdir(f"/proc/{pid}/fd")),
                      threads=int(fields["Threads"].strip()),
                      rss_mib=int(fields["VmRSS"].split()[0]) / 1024)


def sample_workers(master_pid: int) -> dict[int, ProcSample]:
    return {pid: sample(pid) for pid in worker_pids(master_pid)}


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Growth allowed per worker between two samples (a leak over minutes of load is tens or
    hundreds of fds): a thread pool may still meet a new peak (a thread, and its SQLite
    connection's three files)."""

    fds: int = 8
    threads: int = 2
    rss_mib: float = 24.0
    rss_ratio: float = 0.10  # growth allowed: the larger of rss_mib and this share of the start


def growth_problems(before: dict[int, ProcSample], after: dict[int, ProcSample],
                    tolerance: Tolerance = Tolerance()) -> list[str]:
    """What grew beyond the tolerance, per worker; a worker that changed is a problem too."""
    if set(before) != set(after):
        return [f"the workers changed during the run: {sorted(before)} -> {sorted(after)}"]
    problems = []
    for pid, start in before.items():
        end = after[pid]
        if end.fds - start.fds > tolerance.fds:
            problems.append(f"worker {pid}: fds {start.fds} -> {end.fds}")
        if end.threads - start.threads > tolerance.threads:
            problems.append(f"worker {pid}: threads {start.threads} -> {end.threads}")
        allowed = max(tolerance.rss_mib, tolerance.rss_ratio * start.rss_mib)
        if end.rss_mib - start.rss_mib > allowed:
            problems.append(f"worker {pid}: RSS {start.rss_mib:.0f} -> {end.rss_mib:.0f} MiB")
    return problems


def describe(samples: dict[int, ProcSample]) -> str:
    return "; ".join(f"worker {pid}: {s.fds} fds, {s.threads} threads, {s.rss_mib:.0f} MiB"
                     for pid, s in samples.items())


# VMs ######################################################################################

def create_vms(http: httpx.Client, count: int, body: dict | None = None) -> list[dict]:
    """``count`` VMs, one after the other; raises on the first failure (the ones made are
    returned by :func:`delete_vms`' caller through the exception's ``created``)."""
    made: list[dict] = []
    for _ in range(count):
        response = http.post("/v1/vms", json=body or CREATE_BODY)
        if response.status_code != 201:
            error = RuntimeError(f"create: {response.status_code} {response.text}")
            error.created = made  # type: ignore[attr-defined]
            raise error
        made.append(response.json())
    return made


@contextlib.contextmanager
def vms_on_a_live_server(key: str, count: int, log_prefix: str, max_vms: int = 8
                         ) -> t.Iterator[tuple[str, subprocess.Popen, list[dict]]]:
    """A live server (:func:`serve`) and ``count`` VMs made through it; yields the base URL,
    the master process and the VMs, and deletes them afterwards (those made before a failed
    create too), printing what could not be."""
    with serve(server_env(key, max_vms), server_log(log_prefix)) as (base, server):
        http = client(base, key)
        vms: list[dict] = []
        try:
            try:
                vms = create_vms(http, count)
            except RuntimeError as exc:
                vms = getattr(exc, "created", [])
                raise
            yield base, server, vms
        finally:
            print(delete_vms(http, [vm["id"] for vm in vms]) or f"{len(vms)} VMs deleted")
            http.close()


def each_in_threads(items: t.Iterable[Item], threads: int,
                    session: t.Callable[[], t.ContextManager[State]],
                    work: t.Callable[[State, Item], None]) -> None:
    """``work(state, item)`` for every item, from ``threads`` threads that each take the next
    item until none is left; ``state`` is what the thread's own ``session()`` yields (its
    HTTP client, say)."""
    pending = list(items)
    lock = threading.Lock()

    def worker() -> None:
        with session() as state:
            while True:
                with lock:
                    if not pending:
                        return
                    item = pending.pop()
                work(state, item)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def delete_vms(http: httpx.Client, ids: t.Iterable[str], parallel: int = 4) -> list[str]:
    """DELETE ?wait=true each (``parallel`` at a time); returns the failures."""
    failures: list[str] = []
    lock = threading.Lock()

    def delete(http: httpx.Client, vm_id: str) -> None:
        try:
            response = http.delete(f"/v1/vms/{vm_id}?wait=true")
            ok = response.status_code in (204, 404)
            text = f"{response.status_code} {response.text}"
        except httpx.HTTPError as exc:
            ok, text = False, repr(exc)
        if not ok:
            with lock:
                failures.append(f"delete {vm_id}: {text}")

    each_in_threads(ids, parallel, lambda: contextlib.nullcontext(http), delete)
    return failures


def burst_create(base: str, key: str, count: int, body: dict | None = None
                 ) -> tuple[list[tuple[float, int, dict]], float, int]:
    """``count`` creates at the same instant, each on its own connection; returns per create
    (seconds to its answer, status, body), the seconds until the last answer, and how many
    429s with ``Retry-After`` were retried.

    Such a 429 says that the worker the connection landed on runs its maximum of long calls
    (``LONG_CALL_SLOTS``), whatever the other workers do; the client retries after the time
    it names, as the SDK (client/rds_client/http.py) does."""
    results: list[tuple[float, int, dict]] = []
    retried = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(count + 1)
    started = [0.0]

    def one() -> None:
        with client(base, key) as http:
            barrier.wait()
            for _attempt in range(30):
                try:
                    response = http.post("/v1/vms", json=body or CREATE_BODY)
                    status, payload = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    status, payload = 0, {"message": repr(exc)}
                    break
                if status != 429 or "Retry-After" not in response.headers:
                    break
                with lock:
                    retried[0] += 1
                time.sleep(float(response.headers["Retry-After"]))
            elapsed = time.monotonic() - started[0]
            with lock:
                results.append((elapsed, status, payload))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    started[0] = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    return sorted(results, key=lambda item: item[0]), time.monotonic() - started[0], retried[0]


# The mixed load ###########################################################################

@dataclasses.dataclass
class Recorder:
    """Latencies per operation and the errors, from many threads."""

    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def ok(self, op: str, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(op, []).append(seconds)

    def error(self, op: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{op}: {what}")

    def timed(self, op: str, call: t.Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            call()
        except (AssertionError, httpx.HTTPError, OSError, tarfile.TarError, ValueError,
                KeyError) as exc:
            self.error(op, f"{type(exc).__name__}: {exc}"[:500])
            return
        self.ok(op, time.monotonic() - started)


def _expect(response: httpx.Response, status: int) -> httpx.Response:
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    return response


def exec_once(http: httpx.Client, vm_id: str, cmd: str = "true") -> None:
    token = secrets.token_hex(4)
    body = _expect(http.post(f"/v1/vms/{vm_id}/exec", json={
        "cmd": f"{cmd} && echo {token}", "timeoutMs": COMMAND_TIMEOUT_MS}), 200).json()
    assert body["exitCode"] == 0 and body["stdout"] == f"{token}\n", body


def exec_each(base: str, key: str, vm_ids: t.Iterable[str], threads: int = 4) -> Recorder:
    """One :func:`exec_once` on every VM, ``threads`` at a time, each thread on its own
    connection: does every VM answer, and how fast (latencies under ``exec``)."""
    recorder = Recorder()

    def answer(http: httpx.Client, vm_id: str) -> None:
        recorder.timed("exec", functools.partial(exec_once, http, vm_id))

    each_in_threads(vm_ids, threads, lambda: client(base, key), answer)
    return recorder


def run_ts_once(http: httpx.Client, vm_id: str) -> None:
    body = _expect(http.post(f"/v1/vms/{vm_id}/run-ts", json={
        "code": "console.log(6 * 7)", "timeoutMs": COMMAND_TIMEOUT_MS}), 200).json()
    assert body["exitCode"] == 0 and body["stdout"] == "42\n", body


def tar_gz(name: str, data: bytes) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def upload_once(http: httpx.Client, vm_id: str, directory: str, payload: bytes) -> None:
    _expect(http.post(f"/v1/vms/{vm_id}/files/upload", params={"dest": directory},
                      content=payload, headers={"Content-Type": "application/gzip"}), 204)


def download_once(http: httpx.Client, vm_id: str, path: str, expected: bytes) -> None:
    response = _expect(http.get(f"/v1/vms/{vm_id}/files/download", params={"path": path}),
                       200)
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == expected, "download differs"


def saturate(base: str, key: str, vm_ids: t.Sequence[str], concurrency: int = 24,
             rounds: int = 3) -> None:
    """Warm the workers to their steady state before their fds and threads are counted:
    ``concurrency`` execs at once, ``rounds`` times, each on a fresh connection (so that every
    worker gets some). A worker's thread pools (gthread, libvirt calls) grow on demand to the
    concurrency they meet, each new thread opens its own SQLite connection, and a worker's
    first call to a VM opens an SSH connection: none of that is a leak. Answers do not matter
    here (beyond a worker's long-call slots they are 429)."""
    for _ in range(rounds):
        barrier = threading.Barrier(concurrency)

        def one(index: int, barrier: threading.Barrier = barrier) -> None:
            with client(base, key) as http:
                barrier.wait()
                with contextlib.suppress(httpx.HTTPError):
                    http.post(f"/v1/vms/{vm_ids[index % len(vm_ids)]}/exec",
                              json={"cmd": "true"})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


ROLES = ("exec", "exec", "run-ts", "transfer")  # the threads per VM, by what they do


def mixed_load(base: str, key: str, vm_ids: list[str], seconds: float,
               roles: t.Sequence[str] = ROLES, recorder: Recorder | None = None) -> Recorder:
    """For ``seconds``, per VM one thread per entry of ``roles``: ``exec`` (a command that
    echoes a token back), ``run-ts`` (TypeScript printing 42) or ``transfer`` (upload a
    256 KiB file in a tar.gz into its own directory, then download it and compare)."""
    recorder = recorder or Recorder()
    deadline = time.monotonic() + seconds

    def loop(vm_id: str, role: str, index: int) -> None:
        blobs = [os.urandom(BLOB_BYTES) for _ in range(2)]
        archives = [tar_gz("blob.bin", blob) for blob in blobs]
        directory = f"/workspace/load-{index}"
        turn = 0
        with client(base, key) as http:
            while time.monotonic() < deadline:
                if role == "exec":
                    recorder.timed("exec", functools.partial(exec_once, http, vm_id))
                elif role == "run-ts":
                    recorder.timed("run-ts", functools.partial(run_ts_once, http, vm_id))
                else:
                    archive, blob = archives[turn % 2], blobs[turn % 2]
                    recorder.timed("upload", functools.partial(
                        upload_once, http, vm_id, directory, archive))
                    recorder.timed("download", functools.partial(
                        download_once, http, vm_id, f"{directory}/blob.bin", blob))
                    turn += 1

    threads = [threading.Thread(target=loop, args=(vm_id, role, index), daemon=True)
               for index, (vm_id, role) in enumerate(
                   (vm_id, role) for vm_id in vm_ids for role in roles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + HTTP_TIMEOUT_S + 30)
    return recorder


class HealthProbe:
    """GET /healthz every ``interval`` seconds in a thread, recording latency and status."""

    def __init__(self, base: str, interval: float = 0.25) -> None:
        self.base = base
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = http.get("/healthz").status_code
                    if status != 200:
                        self.failures.append(f"/healthz answered {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"/healthz: {exc!r}")
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(self.interval)


# Throughput of one operation at a fixed concurrency ######################################

def throughput(call: t.Callable[[int], None], concurrency: int, seconds: float,
               settle: float = 0.0) -> tuple[int, list[float], list[str]]:
    """``concurrency`` threads calling ``call(thread_index)`` for ``settle`` + ``seconds``;
    returns the calls completed within the last ``seconds``, their latencies and the errors.

    :param settle: seconds of calls not counted first: threads that all start at once finish
        their first calls together, and a window counted from that start holds about half a
        call per thread less than the steady rate (more so for the side whose calls take
        longer). Counted after a settle of a few calls' time, the rate is the steady one.
    """
    recorder = Recorder()
    barrier = threading.Barrier(concurrency)
    window: dict[str, float] = {}

    def loop(index: int) -> None:
        barrier.wait()
        window.setdefault("start", time.monotonic() + settle)
        window.setdefault("end", window["start"] + seconds)
        while time.monotonic() < window["end"]:
            started = time.monotonic()
            try:
                call(index)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                recorder.error("call", f"{type(exc).__name__}: {exc}"[:300])
                continue
            if window["start"] <= time.monotonic() <= window["end"]:
                recorder.ok("call", time.monotonic() - started)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=settle + seconds + HTTP_TIMEOUT_S + 30)
    done = recorder.latencies.get("call", [])
    return len(done), done, recorder.errors


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    with open("/proc/meminfo") as handle:
        return {name: int(value.split()[0]) for name, value in
                (line.split(":", 1) for line in handle)}
