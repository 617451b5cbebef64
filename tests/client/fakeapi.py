"""A scripted stand-in for the server: routes answer from queues or functions, and every
request is recorded (with its body read), so tests can check what the SDK sent."""
from __future__ import annotations

import collections
import json
import typing as t

import httpx

from rds_client import Client

URL = "http://rds.test"
API_KEY = "client-test-key"
VM_ID = "3f0c2a1e-5b7d-4c1a-9e2f-0a1b2c3d4e5f"

Answer = httpx.Response | Exception | t.Callable[[httpx.Request], httpx.Response]


def vm_json(vm_id: str = VM_ID, **fields: t.Any) -> dict[str, t.Any]:
    """A VM as the server answers it (with the issue-13 fields)."""
    return {"id": vm_id, "name": f"rds-{vm_id[:8]}", "state": "RUNNING", "cpu": 1,
            "memMb": 256, "guestIp": "172.16.0.2", "outboundInternet": False, "allowIps": [],
            "createdAt": "2025-01-01T12:00:00.000Z", "imageId": "default",
            "provisionMode": "snapshot", "snapshotId": None, "labels": {}, "expiresAt": None,
            "idleStopSeconds": 0, **fields}


def result_json(exit_code: int = 0, stdout: str = "", stderr: str = "",
                **fields: t.Any) -> dict[str, t.Any]:
    return {"exitCode": exit_code, "stdout": stdout, "stderr": stderr, "timedOut": False,
            "stdoutTruncated": False, "stderrTruncated": False, "durationMs": 12, **fields}


def error(status: int, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"message": message}, headers=headers)


def ndjson(*lines: dict[str, t.Any], status: int = 200) -> httpx.Response:
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return httpx.Response(status, content=body,
                          headers={"Content-Type": "application/x-ndjson"})


class FakeApi:
    """``api.on("GET", "/v1/vms/x", response, ...)`` queues answers for a route (the last one
    repeats); ``api.requests`` holds what arrived; ``api.sleeps`` the retry delays."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], collections.deque[Answer]] = {}
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def on(self, method: str, path: str, *answers: Answer) -> FakeApi:
        self.routes[(method, path)] = collections.deque(answers)
        return self

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return error(404, f"no route {request.method} {request.url.path} in the fake")
        answer = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):  # a fresh copy: a response is read once
            headers = [(k, v) for k, v in answer.headers.items() if k != "content-length"]
            return httpx.Response(answer.status_code, headers=headers, content=answer.content)
        return answer(request)

    def client(self, **options: t.Any) -> Client:
        options.setdefault("sleep", self.sleeps.append)
        return Client(URL, API_KEY, transport=httpx.MockTransport(self.handle), **options)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def body(self, index: int = -1) -> t.Any:
        return json.loads(self.requests[index].content)
