"""One httpx client per SDK client: authentication, timeouts, bounded retries and error mapping.

Retries are safe only where repeating a request cannot do something twice: GET and DELETE
are retried on connection errors, client timeouts and the answers that say "try again"
(429, 502, 503), with exponential backoff that honours ``Retry-After``; any method is retried
when the connection could not even be opened, because then nothing was sent. A POST that was
sent is never repeated: a create retried after a lost answer would make a second VM.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
import typing as t
import uuid

import httpx

from rds_client._version import __version__
from rds_client.errors import RdsError, Timeout, TransportError, error_for_status

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE"})
RETRY_STATUSES = frozenset({429, 502, 503})
# Nothing reached the server: repeating is safe whatever the method.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout,
                                                httpx.PoolTimeout)
# The network failed (not the request itself, as a bad URL or a proxy would): worth another
# try for an idempotent call.
NETWORK_ERRORS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError,
                                               httpx.RemoteProtocolError)
DEFAULT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
MAX_RETRY_AFTER_S = 30.0

ContentFactory = t.Callable[[], t.Iterable[bytes]]


class Http:
    """The HTTP side of :class:`~rds_client.Client`.

    :param url: the service's base URL, e.g. ``http://127.0.0.1:3000``.
    :param api_key: sent as ``X-API-Key``.
    :param timeout: seconds to wait for an answer when a call names no timeout of its own.
    :param retries: how many times an idempotent call is repeated at most (0: never).
    :param backoff: the first retry's delay in seconds; each further one doubles it.
    :param max_backoff: the longest delay between two attempts.
    :param transport: an httpx transport (tests pass ``httpx.MockTransport``).
    :param sleep: how to wait between attempts (tests pass a recorder).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 transport: httpx.BaseTransport | None = None, verify: bool | str = True,
                 headers: t.Mapping[str, str] | None = None,
                 sleep: t.Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=self.url, transport=transport, verify=verify,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
            headers={"X-API-Key": api_key, "User-Agent": f"rds-client/{__version__}",
                     "Accept": "application/json", **(headers or {})})

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kwargs: t.Any) -> httpx.Response:
        """Send a request, retrying where that is safe, and return its successful answer
        (read in full). Arguments as :meth:`open`.

        :raises RdsError: the matching subclass for an error answer or a transport failure.
        """
        response = self.open(method, path, **kwargs)
        try:
            response.read()
        except httpx.HTTPError as exc:
            timeout = kwargs.get("timeout") or self.timeout
            raise transport_error(exc, f"{method} {path}", timeout) from exc
        finally:
            response.close()
        return response

    def call_json(self, method: str, path: str, **kwargs: t.Any) -> t.Any:
        """:meth:`call`, returning the decoded JSON body."""
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise TransportError(f"{method} {path}: the answer is not JSON",
                                 status=response.status_code,
                                 request_id=response.headers.get("X-Request-Id")) from exc

    def open(self, method: str, path: str, *, json_body: t.Any = None, params: t.Any = None,
             content: ContentFactory | None = None, headers: t.Mapping[str, str] | None = None,
             timeout: float | None = None) -> httpx.Response:
        """Send a request and return its successful answer with the body not yet read: the
        caller reads it (``iter_bytes``) and must close it.

        :param content: makes the request body (a fresh iterator for every attempt).
        :param timeout: seconds an answer, or the next piece of a body in either direction,
            may take (default: the client's).
        :raises RdsError: the matching subclass for an error answer or a transport failure.
        """
        read = self.timeout if timeout is None else timeout
        limits = httpx.Timeout(read, connect=CONNECT_TIMEOUT_S)
        request_id = f"rds-{uuid.uuid4().hex[:16]}"
        attempt = 0
        while True:
            request = self._client.build_request(
                method, path, json=json_body, params=params,
                content=content() if content is not None else None, timeout=limits,
                headers={"X-Request-Id": request_id, **(headers or {})})
            try:
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                if attempt < self.retries and self._may_retry_error(method, exc):
                    self._sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise transport_error(exc, f"{method} {path}", read) from exc
            if response.is_success:
                return response
            error = self._error(response, method, path, read)
            if attempt < self.retries and method in IDEMPOTENT_METHODS \
                    and response.status_code in RETRY_STATUSES:
                self._sleep(self._delay(attempt, getattr(error, "retry_after", None)))
                attempt += 1
                continue
            raise error

    @staticmethod
    def _may_retry_error(method: str, exc: httpx.HTTPError) -> bool:
        if isinstance(exc, NOT_SENT_ERRORS):
            return True
        return method in IDEMPOTENT_METHODS and isinstance(exc, NETWORK_ERRORS)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt)
        delay *= 0.5 + random.random() / 2  # jitter: CI jobs failing together spread out
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    @staticmethod
    def _error(response: httpx.Response, method: str, path: str, timeout: float) -> RdsError:
        """The exception for an error answer (whose body is read and closed here)."""
        try:
            response.read()
        except httpx.HTTPError as exc:
            return transport_error(exc, f"{method} {path}", timeout)
        finally:
            response.close()
        return error_from_response(response)


def error_from_response(response: httpx.Response) -> RdsError:
    """The exception for an error answer whose body was read."""
    body: dict[str, t.Any] = {}
    with contextlib.suppress(ValueError):
        decoded = json.loads(response.content or b"null")
        if isinstance(decoded, dict):
            body = decoded
    message = body.get("message")
    if not isinstance(message, str) or not message:
        text = response.text.strip()[:200] if response.content else ""
        message = text or response.reason_phrase or "error"
    retry_after = None
    with contextlib.suppress(ValueError):
        retry_after = float(response.headers.get("Retry-After", ""))
    return error_for_status(response.status_code, message, body=body,
                            request_id=response.headers.get("X-Request-Id"),
                            retry_after=retry_after)


def transport_error(exc: httpx.HTTPError, what: str, timeout: float) -> RdsError:
    """The SDK's exception for an httpx failure during ``what`` (e.g. ``"GET /v1/vms"``):
    ``Timeout`` when no answer came in time, else ``TransportError``."""
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"{what}: no answer within {timeout:g} s ({type(exc).__name__})")
    detail = str(exc) or type(exc).__name__
    return TransportError(f"{what}: {detail}")
