"""A watchdog for deadlines that blocking calls do not keep themselves."""
from __future__ import annotations

import heapq
import logging
import math
import os
import threading
import time
import typing as t

log = logging.getLogger(__name__)
# Deadlines are kept to the next tick at most: one wake-up of the thread per tick, however
# many calls (each arms one) ended meanwhile.
TICK_S = 0.1


class Watchdog:
    """One thread per process that runs callbacks at deadlines: it closes the SSH channel of a
    command whose deadline passed while paramiko waits without a timeout of its own (the
    reply to an exec request, a send into a full window). The sandbox user can stop its own
    sshd session process (``kill -STOP``), which freezes every channel of the connection."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        # (deadline, token) in deadline order; a disarmed one stays until its deadline but
        # without its callback, which holds what it closes (a channel and its buffers: a
        # command's deadline is often minutes after its end, and under load thousands of
        # channels were kept alive that way).
        self._timers: list[tuple[float, int]] = []
        self._callbacks: dict[int, t.Callable[[], None]] = {}
        self._counter = 0
        self._pid = 0

    def arm(self, deadline: float, callback: t.Callable[[], None]) -> int:
        """Run ``callback`` at ``deadline`` (monotonic) unless :meth:`disarm` came first."""
        with self._lock:
            if self._pid != os.getpid():  # a forked worker: the thread stayed in the parent
                self._pid = os.getpid()
                self._timers, self._callbacks = [], {}
                threading.Thread(target=self._loop, name="ssh-watchdog", daemon=True).start()
            self._counter += 1
            heapq.heappush(self._timers, (deadline, self._counter))
            self._callbacks[self._counter] = callback
            if self._timers[0][1] == self._counter:
                # The earliest now: the thread waits for a later one and must wait less. (A
                # later deadline needs no wake-up: every call arms one, and under load a
                # wake-up per call is a thread switch per call.)
                self._lock.notify()
            return self._counter

    def disarm(self, token: int) -> None:
        with self._lock:
            self._callbacks.pop(token, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                while not self._timers or self._timers[0][0] > now:
                    if not self._timers:
                        self._lock.wait()
                    else:
                        # Up to the next tick: the deadlines (mostly of calls that ended and
                        # disarmed theirs) of one tick are popped in one wake-up, not one each.
                        due = math.ceil(self._timers[0][0] / TICK_S) * TICK_S
                        self._lock.wait(max(0.0, due - now))
                    now = time.monotonic()
                callbacks = []
                while self._timers and self._timers[0][0] <= now:
                    _deadline, token = heapq.heappop(self._timers)
                    callback = self._callbacks.pop(token, None)
                    if callback is not None:
                        callbacks.append(callback)
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # a failing callback must not stop the others
                    log.exception("watchdog callback failed")


WATCHDOG = Watchdog()
