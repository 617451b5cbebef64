"""What a connection last read about its domains, kept until libvirt says a domain changed.

Every call about a VM (an exec, a file transfer, run-ts) needs the VM's record and run state:
three libvirt round trips (lookup, state, metadata) and a hand-off to the connection's call
thread. :class:`DomainCache` keeps those answers for the calls that take them from it
(:meth:`app.virt.connection.Hypervisor.get_domain_cached`), and drops them when they may be
stale:

- libvirt's domain events, registered on the connection the answers came from: a lifecycle
  event (started, stopped, crashed, undefined, ...) or a metadata change of a domain, made by
  any process (another worker, another manager, ``virsh``);
- any call of this process that may change a domain (define, start, destroy, set metadata,
  ...), before and after it runs: its own change is seen at once, not when the event comes;
- a new or lost connection (events are not delivered without one), and an age limit
  (:data:`MAX_AGE_S`) in case an event was missed.

An answer read while something was dropped is not kept (the generation it started from is
gone): a lookup that raced a change cannot put the old state back.
"""
from __future__ import annotations

import threading
import time
import typing as t

from app.models import DomainInfo

MAX_AGE_S = 10.0


class DomainCache:
    """Thread-safe; off until :meth:`start` (the connection's events are registered)."""

    def __init__(self, max_age_s: float = MAX_AGE_S,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, DomainInfo]] = {}
        self._generation = 0
        self._active = False

    @property
    def generation(self) -> int:
        """Take it before reading from libvirt; give it to :meth:`put` with the answer."""
        return self._generation

    def get(self, uuid: str) -> DomainInfo | None:
        with self._lock:
            if not self._active:
                return None
            found = self._entries.get(uuid)
            if found is None:
                return None
            read_at, info = found
            if self._clock() - read_at > self.max_age_s:
                del self._entries[uuid]
                return None
            return info

    def put(self, uuid: str, info: DomainInfo, generation: int) -> None:
        """Keep ``info``, read from libvirt after :attr:`generation` was ``generation``,
        unless something was dropped since."""
        with self._lock:
            if self._active and generation == self._generation:
                self._entries[uuid] = (self._clock(), info)

    def invalidate(self, uuid: str) -> None:
        """A domain changed (its event came)."""
        with self._lock:
            self._generation += 1
            self._entries.pop(uuid, None)

    def clear(self) -> None:
        """Anything may have changed (a call of this process that changes domains)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def start(self) -> None:
        """Events are registered on the current connection: answers may be kept."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._active = True

    def stop(self) -> None:
        """The connection the events came on is gone (or none is registered): keep nothing."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._active = False


def watch(conn: t.Any, cache: DomainCache) -> bool:
    """Register ``cache`` for the domain events of ``conn`` (a new connection) and start it;
    False (the cache stays off) when the driver has no events. Callbacks run on libvirt's
    event loop thread, and read only the domain's UUID (no call to libvirtd)."""
    import libvirt

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
