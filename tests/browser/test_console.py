"""The admin console in a real headless Chromium: log in, create a VM, watch a command's
output stream in and the activity feed follow, stop, start and delete it; create an API key
(its secret shown once, working against the API) and revoke it; create a webhook to a local
receiver and see its deliveries, redeliver, disable and delete it; make a custom image the
default and back, and delete it.

``RDS_CONSOLE_SCREENSHOT=docs/console.png`` also saves the screenshot of the README.
"""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import re
import threading
import time
import typing as t
import uuid

import httpx
import pytest

from tests.browser.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, API_KEY, SERVER_ENV

pytestmark = pytest.mark.integration
BOOT_MS = 240_000  # a create or a start boots a guest (TCG: slow)


def watched(tab: t.Any) -> t.Any:
    """``tab`` collecting every problem it reports (script errors, requests the
    Content-Security-Policy refused) in ``tab.problems``; confirmations are accepted."""
    tab.problems = []
    tab.on("pageerror", lambda error: tab.problems.append(f"script error: {error}"))
    tab.on("console", lambda message: tab.problems.append(message.text)
           if "Content Security Policy" in message.text else None)
    tab.on("dialog", lambda dialog: dialog.accept())  # "Delete rds-...?"
    return tab


def goto(tab: t.Any, path: str) -> t.Any:
    """``tab.goto(path)``, once more if Chromium calls it off with ERR_NETWORK_CHANGED: it
    watches the host's interfaces, and a VM's tap coming or going counts as a change."""
    for attempt in range(3):
        try:
            return tab.goto(path)
        except Exception as error:  # playwright's Error; imported lazily like the rest
            if "ERR_NETWORK_CHANGED" not in str(error) or attempt == 2:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def page(browser: t.Any, console_server: str) -> t.Iterator[t.Any]:
    """One browser tab on the server itself for the module."""
    context = browser.new_context(base_url=console_server,
                                  viewport={"width": 1280, "height": 860})
    yield watched(context.new_page())
    context.close()


def log_in(page: t.Any, password: str = ADMIN_PASSWORD) -> None:
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def feed_item(page: t.Any, event_type: str, vm_id: str) -> t.Any:
    return page.locator("#activity-feed li").filter(has_text=event_type).filter(
        has_text=vm_id)


def test_login_form_and_the_live_feed(page: t.Any) -> None:
    from playwright.sync_api import expect

    goto(page, "/admin")
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    log_in(page, password="wrong")
    expect(page.get_by_role("alert")).to_have_text("Invalid email or password")
    log_in(page)
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
    nav = page.get_by_role("navigation")
    expect(nav.get_by_role("link", name="VMs")).to_have_attribute("aria-current", "page")
    expect(page.locator("#activity-state")).to_have_text("(live)")
    assert not page.problems


def test_api_key_created_shown_once_and_revoked(page: t.Any, console_server: str) -> None:
    """A key made in the console works against the API until it is revoked there; its
    secret is shown once, never listed."""
    from playwright.sync_api import expect

    name = f"console-{uuid.uuid4().hex[:8]}"
    goto(page, "/admin/#keys")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    form = page.locator("form.create")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Max VMs").fill("2")
    expect(form.get_by_label("vms", exact=True)).to_be_checked()
    form.get_by_role("button", name="Create key").click()
    shown = page.get_by_label(f"Secret of API key {name} (shown only this once)")
    expect(shown).to_be_visible()
    expect(shown).to_have_attribute("readonly", "")
    expect(shown).to_be_focused()
    secret = shown.input_value()
    assert re.fullmatch(r"rds_[A-Za-z0-9]{8}_\S+", secret), secret
    expect(page.locator(".secret [role=status]")).to_contain_text("only this once")
    expect(form.get_by_label("Name", exact=True)).to_be_empty()  # the form is ready again
    expect(form.get_by_label("vms", exact=True)).to_be_checked()
    row = page.locator("tr[data-key]").filter(has_text=name)
    expect(row).to_contain_text(secret[4:12])  # its prefix
    expect(row).to_contain_text("vms")
    key_id = row.get_attribute("data-key")
    try:
        assert httpx.get(f"{console_server}/v1/vms", headers={"X-API-Key": secret},
                         timeout=30).status_code == 200
        assert httpx.get(f"{console_server}/v1/admin/api-keys", timeout=30,
                         headers={"X-API-Key": secret}).status_code == 403  # not admin
        expect(feed_item(page, "apikey.created", key_id)).to_have_count(1)

        # Once: gone from the page when it is shown again.
        page.get_by_role("navigation").get_by_role("link", name="VMs").click()
        page.get_by_role("navigation").get_by_role("link", name="API keys").click()
        expect(row).to_be_visible()
        assert secret not in page.content()

        row.get_by_role("button", name=f"Revoke API key {name}").click()
        expect(row).to_contain_text("revoked")
        expect(row.get_by_role("button")).to_have_count(0)
        expect(row.locator("td").nth(4)).not_to_have_text("never")  # last used
        assert httpx.get(f"{console_server}/v1/vms", headers={"X-API-Key": secret},
                         timeout=30).status_code == 401
        expect(feed_item(page, "apikey.revoked", key_id)).to_have_count(1)
    finally:
        httpx.post(f"{console_server}/v1/admin/api-keys/{key_id}/revoke", timeout=30,
                   headers={"X-API-Key": API_KEY})
    assert not page.problems


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that answers 204 and keeps every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # the name is http.server's API
                posts.append((dict(self.headers),
                              self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hooks/rds"


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def deliveries() -> t.Iterator[None]:
    """The delivery loop of the host's maintainer: console_server runs without upkeep (it must
    leave the host's maintainer alone), so the test sends its deliveries, with the real
    DeliveryWorker over the server's state database, as the maintenance owner would."""
    from app.config import load_settings
    from app.services.webhook_delivery import DeliveryWorker
    from app.store.db import Store

    settings = load_settings(overrides=SERVER_ENV)
    store = Store(settings.state_db_path)
    store.open()
    worker = DeliveryWorker(settings, store)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.3):
            worker.run_once()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
    worker.close()
    store.close()


def test_webhook_created_delivered_redelivered_and_deleted(
        page: t.Any, console_server: str, receiver: Receiver, deliveries: None) -> None:
    """A webhook made in the console to a local receiver: an event (an API key's creation)
    arrives signed with the secret the console showed once, the console lists the delivery
    with its 204, and Redeliver, Disable and Delete work."""
    from playwright.sync_api import expect

    name = f"hook-{uuid.uuid4().hex[:8]}"
    goto(page, "/admin/#webhooks")
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    form = page.locator("form.create")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("URL", exact=True).fill(receiver.url)
    form.get_by_label("apikey.created").check()
    expect(form.get_by_label("Enabled", exact=True)).to_be_checked()
    form.get_by_role("button", name="Create webhook").click()
    shown = page.get_by_label(f"Signing secret of webhook {name} (shown only this once)")
    expect(shown).to_be_visible()
    secret = shown.input_value()
    assert secret.startswith("whsec_"), secret
    expect(form.get_by_label("Enabled", exact=True)).to_be_checked()  # the form is reset
    expect(form.get_by_label("apikey.created")).not_to_be_checked()
    row = page.locator("tr[data-webhook]").filter(has_text=name)
    expect(row).to_contain_text(receiver.url)
    expect(row).to_contain_text("apikey.created")
    hook_id = row.get_attribute("data-webhook")
    key_name = f"hooked-{uuid.uuid4().hex[:8]}"
    admin = {"X-API-Key": API_KEY}
    try:
        made = httpx.post(f"{console_server}/v1/admin/api-keys", headers=admin, timeout=30,
                          json={"name": key_name})
        assert made.status_code == 201, made.text
        key_id = made.json()["id"]
        httpx.post(f"{console_server}/v1/admin/api-keys/{key_id}/revoke", headers=admin,
                   timeout=30)  # apikey.revoked: not one of the webhook's types

        row.get_by_role("link", name=f"Deliveries of webhook {name}").click()
        expect(page.get_by_role("heading", name=f"Webhook {name}")).to_be_visible()
        delivery = page.locator("tr[data-delivery]")
        expect(delivery).to_have_count(1)
        expect(delivery).to_contain_text("apikey.created")
        expect(delivery.locator(".state")).to_have_text("delivered", timeout=30_000)
        expect(delivery.locator(".status-code")).to_have_text(re.compile(r"^2\d\d$"))
        headers, body = receiver.posts[0]
        assert headers["X-RDS-Event"] == "apikey.created"
        assert headers["X-RDS-Delivery"] == delivery.get_attribute("data-delivery")
        assert json.loads(body)["entity"]["id"] == key_id
        stamp, signed = (part.split("=", 1)[1] for part in headers["X-RDS-Signature"].split(","))
        assert hmac.compare_digest(signed, hmac.new(
            secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest())
        assert abs(time.time() - int(stamp)) < 300

        delivery.get_by_role("button", name=re.compile(r"^Redeliver apikey\.created")).click()
        expect(page.locator("#status")).to_contain_text("Redelivering apikey.created: done")
        deadline = time.monotonic() + 30
        while len(receiver.posts) < 2:
            assert time.monotonic() < deadline, "the redelivery did not arrive"
            time.sleep(0.2)
        assert receiver.posts[1][0]["X-RDS-Delivery"] == receiver.posts[0][0]["X-RDS-Delivery"]
        expect(delivery.locator(".state")).to_have_text("delivered", timeout=30_000)

        page.get_by_role("button", name=f"Disable webhook {name}").click()
        expect(page.locator("dl.details")).to_contain_text("Enabledno")
        page.get_by_role("button", name=f"Enable webhook {name}").click()
        expect(page.locator("dl.details")).to_contain_text("Enabledyes")
        page.get_by_role("button", name=f"Delete webhook {name}").click()
        expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
        expect(page.locator("tr[data-webhook]").filter(has_text=name)).to_have_count(0)
    finally:
        httpx.delete(f"{console_server}/v1/admin/webhooks/{hook_id}", headers=admin,
                     timeout=30)
    assert httpx.get(f"{console_server}/v1/admin/webhooks/{hook_id}", headers=admin,
                     timeout=30).status_code == 404
    assert not page.problems


def test_create_run_stop_start_delete(page: t.Any, key_client: t.Any) -> None:
    from playwright.sync_api import expect

    goto(page, "/admin/#vms")
    page.get_by_label("Labels").fill("team=console, job=browser")
    page.get_by_label("Lifetime (s)").fill("1800")
    page.get_by_role("button", name="Create VM").click()
    heading = page.get_by_role("heading", name=re.compile(r"^VM rds-"))
    failed = page.locator("#status.error")  # the create's error, if it fails
    expect(heading.or_(failed)).to_be_visible(timeout=BOOT_MS)
    assert heading.is_visible(), failed.text_content()
    vm_id = page.url.rsplit("/", 1)[1]
    key_client.vm_ids.add(vm_id)
    expect(page.locator("dl.details")).to_contain_text("job=browser, team=console")
    expect(feed_item(page, "vm.created", vm_id)).to_have_count(1)

    # The command's first line shows while it still runs: the output streams in.
    page.get_by_label("Command", exact=True).fill(
        "echo first-line; sleep 4; echo second-line; echo oops >&2")
    page.get_by_role("button", name="Run").click()
    output = page.get_by_role("log", name="Command output")
    expect(output).to_contain_text("first-line", timeout=30_000)
    expect(page.locator("#cmd-result")).to_have_text("Running…")
    expect(output).not_to_contain_text("second-line")
    expect(page.locator("#cmd-result")).to_have_text(re.compile(r"^Exit code 0 "),
                                                     timeout=30_000)
    expect(output).to_contain_text("second-line")
    expect(output.locator("span.stderr")).to_have_text("oops\n")
    expect(page.locator("#history-content")).to_contain_text("echo first-line")
    expect(page.locator("#console-content pre")).not_to_be_empty()
    if os.environ.get("RDS_CONSOLE_SCREENSHOT"):
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["RDS_CONSOLE_SCREENSHOT"])

    page.get_by_role("button", name=re.compile(r"^Stop rds-")).click()
    expect(page.locator("dl.details")).to_contain_text("STOPPED", timeout=120_000)
    expect(feed_item(page, "vm.stopped", vm_id)).to_have_count(1)
    page.get_by_role("button", name=re.compile(r"^Start rds-")).click()
    expect(page.get_by_role("heading", name="Run a command")).to_be_visible(timeout=BOOT_MS)
    expect(feed_item(page, "vm.started", vm_id)).to_have_count(1)

    page.get_by_role("navigation").get_by_role("link", name="VMs").click()
    row = page.locator(f"tr[data-vm='{vm_id}']")
    expect(row).to_contain_text("RUNNING")
    expect(row).to_contain_text(re.compile(r"in \d+ min"))  # expiresAt, as a countdown
    row.get_by_role("button", name=re.compile(r"^Delete rds-")).click()
    expect(row).to_have_count(0, timeout=120_000)
    expect(feed_item(page, "vm.deleted", vm_id)).to_have_count(1)
    assert not page.problems


def test_an_image_made_the_default_and_back_then_deleted(page: t.Any,
                                                       console_server: str) -> None:
    """The Images page offers Set default on a READY image that is not the default and
    Delete on a custom image that is not; the built-in default offers neither."""
    from playwright.sync_api import expect

    from app import create_app

    api = httpx.Client(base_url=console_server, headers={"X-API-Key": API_KEY}, timeout=120)
    default = next(image["id"] for image in api.get("/v1/images").json() if image["isDefault"])
    created = api.post("/v1/images", json={"name": f"console-{uuid.uuid4().hex[:8]}",
                                           "setup": "true"})
    assert created.status_code == 202, created.text
    image_id = created.json()["id"]
    try:
        # The console's server runs without its upkeep (no maintainer): build the image here,
        # as the service's maintaining worker would.
        builder = create_app({"API_KEY": API_KEY})
        try:
            builder.extensions["rds"].image_builder.run_pending()
        finally:
            builder.extensions["rds"].close()
        assert api.get(f"/v1/images/{image_id}").json()["state"] == "READY"

        goto(page, "/admin/#images")
        custom = page.locator(f"tr[data-image='{image_id}']")
        builtin = page.locator(f"tr[data-image='{default}']")
        make_custom_default = custom.get_by_role("button",
                                                 name=f"Make {image_id} the default image")
        delete_custom = custom.get_by_role("button", name=f"Delete image {image_id}")
        expect(make_custom_default).to_be_visible()
        expect(delete_custom).to_be_visible()
        expect(builtin.get_by_role("button")).to_have_count(0)

        make_custom_default.click()
        expect(custom.locator("td").nth(1)).to_have_text("yes")  # the Default column
        expect(delete_custom).to_have_count(0)  # the default cannot be deleted
        assert api.get(f"/v1/images/{image_id}").json()["isDefault"] is True
        builtin.get_by_role("button", name=f"Make {default} the default image").click()
        expect(builtin.locator("td").nth(1)).to_have_text("yes")
        expect(custom.locator("td").nth(1)).to_have_text("")

        delete_custom.click()  # confirmed by watched()
        expect(custom).to_have_count(0, timeout=60_000)
        assert api.get(f"/v1/images/{image_id}").status_code == 404
        assert not page.problems
    finally:
        api.post(f"/v1/images/{default}/set-default")
        api.delete(f"/v1/images/{image_id}")
        api.close()


def test_through_the_shipped_nginx_site(browser: t.Any, nginx_base: str) -> None:
    """/admin passes nginx with its CSP, the event stream opens through it, and a
    state-changing call with the cookie (log out) passes the CSRF check on a port other
    than 443."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=nginx_base, ignore_https_errors=True)
    tab = watched(context.new_page())
    response = goto(tab, "/admin")
    assert response.ok
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    log_in(tab)
    expect(tab.get_by_role("heading", name="Virtual machines")).to_be_visible()
    expect(tab.locator("#activity-state")).to_have_text("(live)")
    tab.get_by_role("button", name="Log out").click()
    expect(tab.get_by_role("alert")).to_have_text("Logged out.")
    assert not tab.problems
    context.close()
