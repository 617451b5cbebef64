"""Who is behind the current request: set by the API's credential check, read by services
that record it (exec history, events) or limit what it may see (a ``vms``-scoped API key sees
only its own VMs). Context variables, so services need no Flask."""
from __future__ import annotations

import contextvars
import dataclasses

SYSTEM = "system"  # work the service does by itself (the reaper, the warm pool)
SCOPES = ("vms", "admin")  # an API key's scopes; admin may do everything
current: contextvars.ContextVar[str] = contextvars.ContextVar("rds_actor", default=SYSTEM)


@dataclasses.dataclass(frozen=True)
class Caller:
    """Whoever the credential check let in.

    :param name: the actor string (:func:`api_key`, :func:`managed_key`, :func:`session`).
    :param key_id: the managed API key's id ("" for the bootstrap key, a session, the system).
    :param scopes: ``vms`` and/or ``admin``.
    :param max_vms: the key's own VM quota (None: only the host's).
    """

    name: str
    key_id: str = ""
    scopes: frozenset[str] = frozenset(SCOPES)
    max_vms: int | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


SYSTEM_CALLER = Caller(SYSTEM)
caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("rds_caller",
                                                                default=SYSTEM_CALLER)


def enter(who: Caller) -> None:
    """Make ``who`` the current request's caller (and its actor string)."""
    caller.set(who)
    current.set(who.name)


def api_key() -> str:
    """The bootstrap key from the environment (``API_KEY``)."""
    return "api-key"


def managed_key(name: str) -> str:
    return f"key:{name}"


def session(email: str) -> str:
    return f"session:{email}"
