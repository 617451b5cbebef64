"""Host-wide locks (flock on a file): shared by every worker process, released by the kernel
when a process dies, so a crash never leaves a lock taken."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
import typing as t
from pathlib import Path

from app.errors import AppError

POLL_S = 0.05


@contextlib.contextmanager
def host_lock(path: Path, timeout: float, busy: t.Callable[[], AppError],
              missing: t.Callable[[], AppError] | None = None) -> t.Iterator[None]:
    """Hold an exclusive lock on ``path``.

    :param busy: the error raised when the lock stays taken for ``timeout`` seconds.
    :param missing: when given, the lock file's directory must exist (the lock belongs to
        something that may be gone): raise this error instead of creating it.
    """
    if missing is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        if missing is None:
            raise
        raise missing() from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise busy() from None
                time.sleep(POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
