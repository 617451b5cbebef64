"""Choosing VMs by label and state, and paging through them (pure).

Pages are in the list's stable order, (createdAt, id); a cursor is an opaque token naming the
last VM of the previous page, so VMs created or deleted between pages never shift the rest.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json

from app.errors import InvalidRequest
from app.models import Vm, VmState


@dataclasses.dataclass(frozen=True)
class VmQuery:
    """:param labels: (key, value) pairs a VM must all carry; value None: any value."""

    labels: tuple[tuple[str, str | None], ...] = ()
    state: VmState | None = None
    limit: int | None = None
    cursor: str | None = None


@dataclasses.dataclass(frozen=True)
class VmPage:
    vms: list[Vm]
    next_cursor: str | None  # None on the last page


def parse_label_filter(text: str) -> tuple[str, str | None]:
    """``"ci.job=42"`` → ``("ci.job", "42")``; ``"ci.job"`` → ``("ci.job", None)``."""
    key, sep, value = text.partition("=")
    if not key:
        raise InvalidRequest(f"label filter {text[:80]!r} must be KEY=VALUE or KEY")
    return key, value if sep else None


def matches(vm: Vm, query: VmQuery) -> bool:
    if query.state is not None and vm.state is not query.state:
        return False
    return all(key in vm.labels and (value is None or vm.labels[key] == value)
               for key, value in query.labels)


def select(vms: list[Vm], query: VmQuery) -> VmPage:
    """The page of ``vms`` (in list order) that ``query`` asks for.

    :raises InvalidRequest: for a cursor this service did not make.
    """
    chosen = [vm for vm in sorted(vms, key=_position) if matches(vm, query)]
    if query.cursor:
        after = decode_cursor(query.cursor)
        chosen = [vm for vm in chosen if _position(vm) > after]
    if query.limit is None or len(chosen) <= query.limit:
        return VmPage(chosen, None)
    page = chosen[:query.limit]
    return VmPage(page, encode_cursor(_position(page[-1])))


def _position(vm: Vm) -> tuple[str, str]:
    return vm.created_at, vm.id


def encode_cursor(position: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, vm_id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(vm_id, str):
            raise ValueError
        return created_at, vm_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this service handed out") from None
