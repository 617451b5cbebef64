"""/v1/admin: the activity feed and the live event stream (Server-Sent Events)."""
from __future__ import annotations

import json
import time
import typing as t

from flask import Response, request, stream_with_context
from flask.views import MethodView

from app.api import ADMIN_ONLY, Blueprint, document_errors, services
from app.api.ndjson import client_gone
from app.errors import InvalidRequest
from app.schemas.admin import ActivityQuerySchema, EventSchema, EventStreamQuerySchema

if t.TYPE_CHECKING:
    from app.services.events import Event, Events

blp = Blueprint("admin", __name__, url_prefix="/v1/admin", description="Activity and events")
SSE = "text/event-stream"
HEARTBEAT_S = 15.0  # a comment line at least this often keeps proxies and clients patient
POLL_S = 0.5
# One event of the stream, as an EventSource hands it over (the schema of each event, as
# OpenAPI 3.2's itemSchema and schemathesis read a text/event-stream schema).
SSE_EVENT = {"type": "object", "properties": {
    "id": {"type": "string", "description": "the event's seq"},
    "event": {"type": "string", "description": "the event's type"},
    "data": {"type": "string", "description": "the event (Event) as JSON"},
    "retry": {"type": "integer", "description": "reconnection delay in ms (the first)"}}}
STREAM_MAX_S = 300.0  # then the stream ends and EventSource reconnects with Last-Event-ID


@blp.route("/activity")
class Activity(MethodView):
    @blp.doc(operationId="listActivity")
    @blp.arguments(ActivityQuerySchema, location="query")
    @blp.response(200, EventSchema(many=True))
    @document_errors(blp, 400, 403, reasons=ADMIN_ONLY)
    def get(self, query):
        """What happened on this host, newest first"""
        found = services().events.recent(query["limit"], set(query["type"]), query["before"])
        return [event.to_json() for event in found]


@blp.route("/events")
class EventStream(MethodView):
    @blp.doc(operationId="streamEvents", responses={"200": {
        "description": "Server-Sent Events: `id` is the event's seq, `event` its type, `data` "
                       "the event as JSON; a `: keepalive` comment every 15 s; the stream "
                       "ends after 5 minutes (EventSource reconnects with Last-Event-ID)",
        "content": {SSE: {"schema": SSE_EVENT}}}})
    @blp.arguments(EventStreamQuerySchema, location="query")
    @document_errors(blp, 400, 403, reasons=ADMIN_ONLY)
    def get(self, query):
        """Events as they happen (Server-Sent Events; resume with Last-Event-ID)"""
        events = services().events
        start = _resume_point(query["after"])
        if start is None:
            start = events.last_seq()
        lines = _stream(events, start, set(query["type"]), client_gone(request.environ))
        return Response(stream_with_context(lines), mimetype=SSE,
                        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})


def _resume_point(after: int | None) -> int | None:
    header = request.headers.get("Last-Event-ID")
    if header is None:
        return after
    if not header.isdigit() or len(header) > 18:
        raise InvalidRequest("Last-Event-ID must be the seq of an event (digits)")
    return int(header)


def _stream(events: Events, last: int, types: set[str],
            gone: t.Callable[[], bool]) -> t.Iterator[bytes]:
    yield b"retry: 2000\n\n"
    started = written = time.monotonic()
    while time.monotonic() - started < STREAM_MAX_S and not gone():
        batch = events.after(last)
        for event in batch:
            last = event.seq
            if not types or event.type in types:
                yield _frame(event)
                written = time.monotonic()
        if time.monotonic() - written >= HEARTBEAT_S:
            yield b": keepalive\n\n"
            written = time.monotonic()
        if not batch:
            time.sleep(POLL_S)


def _frame(event: Event) -> bytes:
    data = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
