"""The libvirt connection of a worker process that gunicorn forked from its master."""
from __future__ import annotations

import os
import threading

from app.virt import libvirt_events
from app.virt.connection import Hypervisor


def test_a_forked_worker_runs_its_own_event_loop(services):
    """The master opened a connection (and started the keepalive loop) before forking: the
    worker must start a loop of its own, or libvirtd drops its idle connection (a 503 after
    ~30 s of quiet, seen on `make run`)."""
    services.hypervisor.ping()  # this process: loop running
    assert libvirt_events._event_loop_pid == os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = b"fail"
        try:
            worker = Hypervisor(services.settings.libvirt_uri, timeout=10)
            worker.ping()
            loops = [t for t in threading.enumerate() if t.name == "libvirt-events"]
            if loops and libvirt_events._event_loop_pid == os.getpid():
                status = b"ok"
        finally:
            os.write(write_end, status)
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.waitpid(child, 0)
    assert answer == b"ok"
