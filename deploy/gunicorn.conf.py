"""run-dat-sheesh's gunicorn settings: ``gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'``.

Threads, not more processes: a create holds its request for a whole boot (TCG: ~15 s), and
the work is I/O-bound (libvirt, SSH). Several workers are fine: libvirt holds all VM state
and address allocation is locked host-wide.
"""
import os

bind = f"{os.environ.get('BIND_HOST', '127.0.0.1')}:{os.environ.get('PORT', '3000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# Longer than the longest call: a boot (BOOT_TIMEOUT_S, 240 s) or an exec (120 s max).
timeout = int(os.environ.get("WEB_TIMEOUT_S", "300"))
graceful_timeout = 30
keepalive = 5
accesslog = "-"
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
