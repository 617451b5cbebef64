"""Who is behind the current request: set by the API's credential check, read by services
that record it (exec history). A context variable, so services need no Flask."""
from __future__ import annotations

import contextvars

SYSTEM = "system"  # work the service does by itself (the reaper, the warm pool)
current: contextvars.ContextVar[str] = contextvars.ContextVar("rds_actor", default=SYSTEM)


def api_key() -> str:
    return "api-key"


def session(email: str) -> str:
    return f"session:{email}"
