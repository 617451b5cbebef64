"""Logging: one line per record on stderr, as text (``key=value``) or, with ``LOG_FORMAT=json``,
as one JSON object per line (python-json-logger). Every record carries the request id and, in
a request about one VM, its id; each request ends with one ``request done`` line naming the
route, status and duration."""
from __future__ import annotations

import logging
import typing as t

from flask import g, has_request_context, request

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - older releases
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef]

TEXT_FORMAT = ("%(asctime)s level=%(levelname)s logger=%(name)s request_id=%(request_id)s "
               "%(message)s")
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(vm_id)s %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger", "asctime": "time"}


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``vm_id`` ("-" / None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = getattr(g, "request_id", "-")
            if not hasattr(record, "vm_id"):
                record.vm_id = (request.view_args or {}).get("vm_id")
        else:
            record.request_id = getattr(record, "request_id", "-")
            record.vm_id = getattr(record, "vm_id", None)
        return True


def configure_logging(level: str, log_format: str = "text") -> None:
    """Install the one stderr handler (once per process)."""
    root = logging.getLogger()
    if any(getattr(handler, "_rds", False) for handler in root.handlers):
        return
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper())
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def make_handler(log_format: str, stream: t.Any = None) -> logging.Handler:
    """A handler writing ``text`` or ``json`` lines to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream)
    handler._rds = True  # type: ignore[attr-defined]
    handler.addFilter(RequestContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
