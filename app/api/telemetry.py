"""Per-request bookkeeping: the request id (taken from ``X-Request-Id`` or made), the
Prometheus request series, and the ``request done`` log line."""
from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request

from app import actor, metrics

log = logging.getLogger("app.requests")
REQUEST_ID_HEADER = "X-Request-Id"
QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # probes: logged at DEBUG only


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
    g.started = time.perf_counter()
    actor.enter(actor.SYSTEM_CALLER)  # until the credential check says who it is


def _finish(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = getattr(g, "request_id", "")
    started = getattr(g, "started", None)
    if started is None:  # a request that failed before _start (nothing to measure)
        return response
    seconds = time.perf_counter() - started
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    metrics.HTTP_DURATION.labels(request.method, route).observe(seconds)
    fields = {"method": request.method, "route": route, "status": response.status_code,
              "duration_ms": round(seconds * 1000, 1)}
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    log.log(level, "request done %s", " ".join(f"{key}={value}" for key, value in
                                              fields.items()), extra=fields)
    return response
