"""The deploy path: gunicorn with deploy/gunicorn.conf.py, as `make run` starts it."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import live_server


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.fixture(scope="module")
def server():
    with live_server({"API_KEY": "live-key", "WEB_WORKERS": "2"}) as running:
        yield running


def test_gunicorn_serves_the_api(server):
    base, _process = server
    status, body, _ = _get(base + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["libvirt"] == "reachable" and health["network"] == "active"
    assert health["accelerator"] in ("kvm", "tcg")
    status, body, headers = _get(base + "/v1/vms")
    assert status == 401 and json.loads(body) == {"message": "Unauthorized"}
    assert headers.get("X-Request-Id")
    status, body, _ = _get(base + "/v1/vms", {"X-API-Key": "live-key"})
    assert status == 200 and isinstance(json.loads(body), list)
    status, body, _ = _get(base + "/swagger/openapi.json")
    assert status == 200 and "/v1/vms" in json.loads(body)["paths"]
    status, body, _ = _get(base + "/docs")
    assert status == 200 and b"swagger" in body.lower()


def test_serve_prints_url_and_key(server):
    base, process = server
    process.terminate()
    output = process.communicate(timeout=30)[0]
    assert base in output and "API key: as set in API_KEY" in output
    assert "live-key" not in output  # a real key never ends up in a journal
