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

The events are registered by :func:`app.virt.libvirt_events.watch` (this module imports no
libvirt).

An answer read while something was dropped is not kept (the generation it started from is
gone): a lookup that raced a change cannot put the old state back.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

from app.models import DomainInfo

MAX_AGE_S = 10.0
# Calls of the connection (their ``what``) that change no domain; any other call drops what
# the cache keeps, before it is sent and once it is done (:meth:`DomainCache.around`).
READ_ONLY_CALLS = frozenset({
    "get domain", "list domains", "lookup domain", "domain stats", "node info", "ping",
    "hypervisor version", "list volumes", "list nwfilters", "list nwfilter bindings",
    "network state", "network dhcp hosts", "guest agent ping", "guest agent status",
    "download volume"})


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

    def around(self, what: str,
               submit: t.Callable[[], concurrent.futures.Future[t.Any]]
               ) -> concurrent.futures.Future[t.Any]:
        """Run ``submit`` (which hands the connection's call ``what`` to its thread); unless
        ``what`` is in :data:`READ_ONLY_CALLS`, drop everything kept before it is sent and
        once it is done, so this process sees its own change at once."""
        if what in READ_ONLY_CALLS:
            return submit()
        self.clear()
        future = submit()
        future.add_done_callback(lambda _done: self.clear())
        return future

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

