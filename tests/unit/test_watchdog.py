"""The SSH deadline watchdog (app/guestssh/watchdog.py)."""
from __future__ import annotations

import threading
import time

from app.guestssh.watchdog import Watchdog


def test_callbacks_run_at_their_deadlines_in_order_and_disarmed_ones_never():
    watchdog = Watchdog()
    fired: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def note(name: str):
        def callback() -> None:
            fired.append((name, time.monotonic() - start))
            if name == "last":
                done.set()
        return callback

    watchdog.arm(start + 0.9, note("last"))
    watchdog.arm(start + 0.6, note("later"))  # later than the head is armed without a wake-up
    cancelled = watchdog.arm(start + 0.4, note("cancelled"))
    watchdog.arm(start + 0.2, note("earliest"))  # earlier than what the thread waits for
    watchdog.disarm(cancelled)
    assert done.wait(5)
    assert [name for name, _at in fired] == ["earliest", "later", "last"]
    for (_name, at), deadline in zip(fired, (0.2, 0.6, 0.9), strict=True):
        assert deadline <= at < deadline + 0.25


def test_an_earlier_deadline_armed_while_the_thread_waits_is_not_late():
    watchdog = Watchdog()
    watchdog.arm(time.monotonic() + 60, lambda: None)  # the thread now waits ~60 s
    time.sleep(0.1)
    fired = threading.Event()
    armed = time.monotonic()
    watchdog.arm(armed + 0.1, fired.set)
    assert fired.wait(2)
    assert time.monotonic() - armed < 0.5
