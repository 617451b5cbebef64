"""libvirt's event loop and the domain events a connection's :class:`DomainCache` listens to.

Part of the connection (:mod:`app.virt.connection` calls it when it opens one); kept apart so
that module is about the connection and its bounded calls.
"""
from __future__ import annotations

import os
import threading
import typing as t

import libvirt

from app.virt.domain_cache import DomainCache

_event_loop_pid: int | None = None  # the process whose thread runs libvirt's event loop
_event_loop_lock = threading.Lock()


def start_event_loop() -> None:
    """Keepalives need libvirt's event loop; one daemon thread per process runs it.

    Per *process*: gunicorn's master opens a connection before it forks the workers, and a
    fork copies the "started" state but not the thread. Without a loop nobody answers
    libvirtd's keepalive probes and it drops the connection after ~30 s idle.
    """
    global _event_loop_pid
    with _event_loop_lock:
        if _event_loop_pid == os.getpid():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_pid = os.getpid()


def watch(conn: t.Any, cache: DomainCache) -> bool:
    """Register ``cache`` for the domain events of ``conn`` (a new connection) and start it;
    False (the cache stays off) when the driver has no events. Callbacks run on libvirt's
    event loop thread, and read only the domain's UUID (no call to libvirtd)."""

    def changed(_conn: t.Any, dom: t.Any, *_rest: t.Any) -> None:
        cache.invalidate(dom.UUIDString())

    def closed(_conn: t.Any, _reason: int, _opaque: t.Any) -> None:
        cache.stop()

    cache.stop()
    try:
        for event in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                      libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE):
            conn.domainEventRegisterAny(None, event, changed, None)
        conn.registerCloseCallback(closed, None)
    except libvirt.libvirtError:
        return False
    cache.start()
    return True
