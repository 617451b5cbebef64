"""run-dat-sheesh's gunicorn settings: ``gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'``.

Threads, not more processes: a create holds its request for a whole boot (TCG: ~15 s), and
the work is I/O-bound (libvirt, SSH). Several workers are fine: libvirt holds all VM state
and address allocation is locked host-wide.
"""
import os
import shutil


def _metrics_dir() -> str:
    """prometheus-client's multiprocess mode: every worker writes its series to files in one
    directory, and a scrape of any worker adds them up. One directory per master process (so
    counters start from zero with the service, and a reload keeps them); those of masters
    that are gone are removed. Set before any worker imports the app.

    Under /run, not STORAGE_ROOT: the series are memory-mapped sparse files, and a worker
    that writes a new series into one on a full filesystem dies of SIGBUS (seen with the
    storage root full, tests/integration/test_faults_storage.py); they last one boot anyway."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return os.environ["PROMETHEUS_MULTIPROC_DIR"]
    base = "/run/run-dat-sheesh/metrics"
    os.makedirs(base, mode=0o700, exist_ok=True)
    for name in os.listdir(base):
        if name.isdigit() and not os.path.exists(f"/proc/{name}"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    path = os.path.join(base, str(os.getpid()))
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


METRICS_DIR = _metrics_dir()

bind = f"{os.environ.get('BIND_HOST', '127.0.0.1')}:{os.environ.get('PORT', '3000')}"


def _default_workers() -> int:
    """One worker per 4 cores, at least 1 and at most 4. Each worker keeps its own SSH
    connection to every VM it has served, and a guest pays for every extra one: on this
    project's 2-core emulated (TCG) host an `exec` cost its guest ~1-2 ms more CPU with 2
    workers than with 1 (of ~35 ms; bench/exec_cpu_split.py, BENCHMARKS.md "Session 15").
    One worker's Python (~4 ms per exec) serves ~200 execs/s; the guests are the limit long
    before on such a host. Bigger hosts get more workers for the Python side."""
    return min(4, max(1, (os.cpu_count() or 1) // 4))


workers = int(os.environ.get("WEB_WORKERS") or _default_workers())
# gthread, keeping a kept-alive connection on its thread while requests follow at once
# (app/gunicorn_worker.py).
worker_class = "app.gunicorn_worker.KeepAliveThreadWorker"
# 32: one worker may get most of the connections (app/config/settings.py web_threads).
threads = int(os.environ.get("WEB_THREADS", "32"))
# Longer than the longest call: a boot (BOOT_TIMEOUT_S, 240 s) or an exec (120 s max).
timeout = int(os.environ.get("WEB_TIMEOUT_S", "300"))
graceful_timeout = 30
keepalive = 5
# No access log of gunicorn's own unless asked for: the app ends every request with a
# `request done` line (method, route, status, duration, request id; docs/operations.md) and
# nginx keeps the access log in front. A second line per request cost ~5 % of a worker's CPU
# per exec (BENCHMARKS.md, "Session 15").
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "").lower() in ("1", "true") else None
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'


def on_starting(server):
    """Before any worker exists (no create in flight): clean leftovers of dead VMs and of
    snapshots that never finished."""
    from app.config import load_settings
    from app.services.container import build_services

    services = build_services(load_settings())
    for item in services.remove_orphans():
        server.log.info("removed orphan %s", item)


def post_worker_init(worker):
    """Every worker runs the maintainer thread; the one holding its host lock does the work
    (memory snapshots, warm pool), another takes over if that worker dies."""
    services = worker.wsgi.extensions["rds"]
    services.maintainer.start()


def on_exit(server):
    """The service stops: remove the warm pool's VMs (a crash leaves them to the next owner,
    which adopts the ready ones and removes the rest)."""
    from app.config import load_settings
    from app.services.container import build_services

    services = build_services(load_settings())
    services.maintainer.drain()


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    services = getattr(app, "extensions", {}).get("rds") if app else None
    if services is not None:
        services.close()


def child_exit(server, worker):
    """A worker is gone: its live series leave the scrape."""
    from app import metrics
    metrics.worker_exited(worker.pid)
