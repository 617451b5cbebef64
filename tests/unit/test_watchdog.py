"""The SSH deadline watchdog (app/guestssh/watchdog.py)."""
from __future__ import annotations

import gc
import threading
import time
import weakref

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


class CountingCondition(threading.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_the_deadlines_of_one_tick_take_one_wake_up():
    """Every call arms a deadline and most disarm it: the thread must not wake up for each
    (one wake-up per exec under load was a thread switch per exec)."""
    watchdog = Watchdog()
    watchdog._lock = counting = CountingCondition()
    start = time.monotonic()
    tokens = [watchdog.arm(start + 0.3 + index * 0.0005, lambda: None) for index in range(100)]
    for token in tokens:
        watchdog.disarm(token)
    fired = threading.Event()
    watchdog.arm(start + 0.5, fired.set)
    assert fired.wait(5)
    assert counting.waits <= 8  # ~one per tick; was one per deadline (over 100)


def test_a_disarmed_deadline_lets_go_of_what_its_callback_holds():
    """A command's deadline often comes minutes after the command ended: its disarmed entry
    must not keep the channel (and its buffers) alive until then."""
    watchdog = Watchdog()

    class Channel:
        def close(self) -> None:
            pass

    channel = Channel()
    held = weakref.ref(channel)
    token = watchdog.arm(time.monotonic() + 600, channel.close)
    watchdog.disarm(token)
    del channel
    gc.collect()
    assert held() is None
