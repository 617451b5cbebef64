"""Browser tests: the admin console (/admin) in a real headless Chromium, driven by
Playwright's Python API, against a live gunicorn (real libvirt, real guests).

Chromium is Debian's package (deploy/host-setup.sh installs it); Playwright's own browser
downloads are never used (``executable_path``). Without Playwright or a Chromium the tests
skip and say which is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import typing as t
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import live_server, no_upkeep_config

API_KEY = "console-browser-test-key"
ADMIN_EMAIL = "console-admin@example.com"
ADMIN_PASSWORD = "console-browser-test-password"
# Behind the shipped nginx site as well (TRUSTED_PROXIES=1), so no development defaults.
# LOGIN_MAX_FAILURES: failed logins from 127.0.0.1 are counted in the host's state database
# for 15 minutes, across runs and test modules (the wrong password of every run, the auth
# tests); the login test must see "Invalid email or password", not a lockout.
SERVER_ENV = {"API_KEY": API_KEY, "ADMIN_EMAIL": ADMIN_EMAIL, "ADMIN_PASSWORD": ADMIN_PASSWORD,
              "SESSION_SECRET": "console-browser-test-session-secret-0123456789",
              "TRUSTED_PROXIES": "1", "WEB_WORKERS": "2", "LOGIN_MAX_FAILURES": "1000"}
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """RDS_CHROMIUM, or the first Chromium on PATH."""
    if os.environ.get("RDS_CHROMIUM"):
        return os.environ["RDS_CHROMIUM"]
    return next(filter(None, map(shutil.which, CHROMIUM)), None)


@pytest.fixture(scope="session")
def browser() -> t.Iterator[t.Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need Playwright's Python package: pip install -e '.[test]'")
    path = chromium_path()
    if path is None:
        pytest.skip("browser tests need Chromium: apt-get install chromium "
                    "(deploy/host-setup.sh installs it), or set RDS_CHROMIUM to a Chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: the suite runs as root, where Chromium's own sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    """A live gunicorn (deploy/gunicorn.conf.py without its upkeep hooks) with a known admin
    account; yields its base URL. Its output goes to a file, printed for a failing run."""
    directory = tmp_path_factory.mktemp("console-server")
    log_path = directory / "server.log"
    print(f"console_server log: {log_path}")
    with log_path.open("w") as log, live_server(
            SERVER_ENV, "-c", str(no_upkeep_config(directory)), output=log) as (base, _process):
        yield base


@pytest.fixture(scope="module")
def nginx_base(console_server: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    """The shipped nginx site (TLS, a self-signed certificate, a random port) in front of
    console_server; yields its base URL."""
    from tests.integration.nginx_site import nginx_site

    upstream = int(console_server.rsplit(":", 1)[1])
    with nginx_site(upstream, tmp_path_factory.mktemp("nginx")) as (port, _context):
        yield f"https://127.0.0.1:{port}"


class KeyClient:
    """The API with the test's key, for set-up and clean-up behind the browser's back."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.vm_ids: set[str] = set()

    def call(self, method: str, path: str, timeout: float = 120) -> t.Any:
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"X-API-Key": API_KEY})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def delete_vms(self) -> None:
        for vm_id in self.vm_ids:
            try:
                self.call("DELETE", f"/v1/vms/{vm_id}?wait=true")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    print(f"cleanup of VM {vm_id} failed: {exc}")


@pytest.fixture(scope="module")
def key_client(console_server: str) -> t.Iterator[KeyClient]:
    """Deletes every VM a test registered in ``vm_ids``, whatever the test did."""
    client = KeyClient(console_server)
    yield client
    client.delete_vms()
