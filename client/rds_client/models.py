"""What the API answers, as frozen dataclasses with snake_case fields.

Every model keeps the JSON it came from in ``raw``, so a field the server added after this SDK
was written is still reachable. Missing optional fields get their contract defaults, so the
models also read answers of servers that predate labels and TTLs.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import typing as t

VM_STATES = ("CREATED", "STARTING", "RUNNING", "STOPPING", "STOPPED", "ERROR", "UNKNOWN")


def parse_time(value: t.Any) -> dt.datetime | None:
    """An ISO-8601 timestamp of the API (``...Z`` or with an offset), or ``None``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Vm:
    """A VM as ``GET /v1/vms/{id}`` answers it."""

    id: str
    state: str
    cpu: int
    mem_mb: int
    guest_ip: str | None
    outbound_internet: bool
    allow_ips: tuple[str, ...]
    created_at: dt.datetime | None
    image_id: str | None
    provision_mode: str | None
    name: str | None
    snapshot_id: str | None
    labels: dict[str, str]
    expires_at: dt.datetime | None
    idle_stop_seconds: int
    created_by: str | None  # who created it: "key:<name>", "api-key", "session:<email>"
    raw: dict[str, t.Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, t.Any]) -> Vm:
        return cls(
            id=str(data["id"]), state=str(data.get("state", "")),
            cpu=int(data.get("cpu") or 0), mem_mb=int(data.get("memMb") or 0),
            guest_ip=data.get("guestIp"), outbound_internet=bool(data.get("outboundInternet")),
            allow_ips=tuple(data.get("allowIps") or ()),
            created_at=parse_time(data.get("createdAt")), image_id=data.get("imageId"),
            provision_mode=data.get("provisionMode"), name=data.get("name"),
            snapshot_id=data.get("snapshotId"), labels=dict(data.get("labels") or {}),
            expires_at=parse_time(data.get("expiresAt")),
            idle_stop_seconds=int(data.get("idleStopSeconds") or 0),
            created_by=data.get("createdBy"), raw=data)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A disk snapshot (``POST /v1/vms/{id}/snapshots``)."""

    id: str
    created_at: dt.datetime | None
    cpu: int
    mem_mb: int
    image_id: str | None
    source_vm_id: str | None
    raw: dict[str, t.Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, t.Any]) -> Snapshot:
        return cls(id=str(data["id"]), created_at=parse_time(data.get("createdAt")),
                   cpu=int(data.get("cpu") or 0), mem_mb=int(data.get("memMb") or 0),
                   image_id=data.get("imageId"), source_vm_id=data.get("sourceVmId"), raw=data)


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """The answer of exec (and the command part of run-ts/run-js).

    ``exit_code`` is -1 and ``timed_out`` true when the timeout killed the command. stdout and
    stderr are text: bytes that are not UTF-8 arrive as U+FFFD. Each is capped by the server,
    and ``stdout_truncated``/``stderr_truncated`` say when the cap cut it.
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int | None = None
    raw: dict[str, t.Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the command exited 0 in time."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, data: dict[str, t.Any]) -> CommandResult:
        return cls(**_command_fields(data))


@dataclasses.dataclass(frozen=True)
class RunResult(CommandResult):
    """The answer of run-ts/run-js: the command's fields plus what the script handed back.

    ``result`` is the value given to ``result.set()`` and ``error`` what ``result.error()`` or an
    uncaught exception produced; both are ``None`` when the script did not set them (see
    ``has_result`` to tell a JSON ``null`` apart).
    """

    result: t.Any = None
    error: t.Any = None

    @property
    def has_result(self) -> bool:
        return "result" in self.raw

    @classmethod
    def from_json(cls, data: dict[str, t.Any]) -> RunResult:
        return cls(**_command_fields(data), result=data.get("result"), error=data.get("error"))


def _command_fields(data: dict[str, t.Any]) -> dict[str, t.Any]:
    return {"exit_code": int(data.get("exitCode", -1)), "stdout": data.get("stdout") or "",
            "stderr": data.get("stderr") or "", "timed_out": bool(data.get("timedOut")),
            "stdout_truncated": bool(data.get("stdoutTruncated")),
            "stderr_truncated": bool(data.get("stderrTruncated")),
            "duration_ms": data.get("durationMs"), "raw": data}


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """A piece of a command's output, as it happened (``sb.stream()``).

    :attr stream: ``"stdout"`` or ``"stderr"``.
    :attr data: the raw bytes (decoded from base64 when the server had to encode them).
    """

    stream: str
    data: bytes

    @property
    def text(self) -> str:
        """The bytes as text; invalid UTF-8 becomes U+FFFD."""
        return self.data.decode("utf-8", errors="replace")

    @classmethod
    def from_json(cls, line: dict[str, t.Any]) -> OutputChunk:
        """One ``{"type": "output", ...}`` line of an ndjson stream.

        :raises ValueError: the line is malformed (unknown stream, bad base64, not text).
        """
        stream, data = line.get("stream"), line.get("data")
        if stream not in ("stdout", "stderr") or not isinstance(data, str):
            raise ValueError(f"malformed output line: {line!r}")
        encoding = line.get("encoding")
        if encoding == "base64":
            return cls(stream, base64.b64decode(data, validate=True))
        if encoding not in (None, "utf-8"):
            raise ValueError(f"unknown encoding {encoding!r} in an output line")
        return cls(stream, data.encode("utf-8", errors="surrogatepass"))
