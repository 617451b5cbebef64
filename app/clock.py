"""Timestamps as the API and the persisted records write them: ISO-8601 UTC with
milliseconds and a ``Z``."""
from __future__ import annotations

import datetime as dt


def now_iso() -> str:
    return iso_after(0)


def iso_after(seconds: float) -> str:
    """The time ``seconds`` from now, as :func:`now_iso` writes it."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_at(timestamp: float) -> str:
    """A Unix time (e.g. a file's mtime), as :func:`now_iso` writes it."""
    when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(iso: str) -> float:
    """Seconds since ``iso`` (a timestamp :func:`now_iso` wrote).

    :raises ValueError: when ``iso`` is no ISO-8601 timestamp with a time zone.
    """
    when = dt.datetime.fromisoformat(iso)
    if when.tzinfo is None:
        raise ValueError(f"{iso!r} has no time zone")
    return (dt.datetime.now(dt.timezone.utc) - when).total_seconds()
