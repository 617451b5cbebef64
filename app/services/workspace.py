"""Paths inside the guest's workspace (pure)."""
from __future__ import annotations

import posixpath

from app.errors import InvalidRequest

WORKSPACE = "/workspace"
GUEST_HELPERS = "/usr/local/lib/rds"  # the in-guest helpers (guest/README.md)
HOME_ALIAS = "/home/user"  # the original service's spelling of the same directory


def workspace_path(raw: str | None, what: str = "path") -> str:
    """Normalise a caller's path to an absolute path inside ``/workspace``.

    Accepts ``/workspace/...``, ``/home/user/...`` (alias) and relative paths (taken under
    ``/workspace``). Symlinks are resolved again in the guest, which refuses escapes too.

    :raises InvalidRequest: for anything outside the workspace.
    """
    if raw is None or raw.strip() == "":
        return WORKSPACE
    if "\0" in raw or "\n" in raw or "\r" in raw:
        raise InvalidRequest(f"{what} contains control characters")
    if raw == HOME_ALIAS or raw.startswith(HOME_ALIAS + "/"):
        raw = WORKSPACE + raw[len(HOME_ALIAS):]
    if not raw.startswith("/"):
        raw = f"{WORKSPACE}/{raw}"
    normalised = posixpath.normpath(raw)
    if normalised.startswith("//"):
        normalised = normalised[1:]
    if normalised != WORKSPACE and not normalised.startswith(WORKSPACE + "/"):
        raise InvalidRequest(f"{what} {raw!r} is outside the workspace ({WORKSPACE})")
    return normalised
