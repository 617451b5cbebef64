"""A spinner on stderr for calls that take a while (create, upload, download).

It shows only on a terminal and only once the call has taken more than ``delay`` seconds, so
CI logs and quick calls never see it; it erases itself when the call ends.
"""
from __future__ import annotations

import threading
import time
import typing as t

FRAMES = "|/-\\"


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class Spinner:
    """``with Spinner("creating VM"): ...``; :meth:`bytes_done` adds a byte count to the label.

    :param enabled: draw at all (default: whether ``stream`` is a terminal).
    """

    def __init__(self, label: str, *, stream: t.TextIO, delay: float = 1.0,
                 interval: float = 0.1, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream
        self.delay = delay
        self.interval = interval
        self.enabled = _isatty(stream) if enabled is None else enabled
        self._detail = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def bytes_done(self, count: int) -> None:
        self._detail = human_bytes(count)

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="rds-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _run(self) -> None:
        started = time.monotonic()
        if self._stop.wait(self.delay):
            return
        frame = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - started
            detail = f" {self._detail}" if self._detail else ""
            self.stream.write(f"\r\033[K{FRAMES[frame % len(FRAMES)]} {self.label}{detail} "
                              f"({elapsed:.0f}s)")
            self.stream.flush()
            self._drawn = True
            frame += 1
            self._stop.wait(self.interval)


def _isatty(stream: t.TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
