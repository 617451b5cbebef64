"""The admin console in a real headless Chromium: log in, create a VM, watch a command's
output stream in and the activity feed follow, stop, start and delete it.

``RDS_CONSOLE_SCREENSHOT=docs/console.png`` also saves the screenshot of the README.
"""
from __future__ import annotations

import os
import re
import typing as t

import pytest

from tests.browser.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

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

    page.goto("/admin")
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


def test_create_run_stop_start_delete(page: t.Any, key_client: t.Any) -> None:
    from playwright.sync_api import expect

    page.goto("/admin/#vms")
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


def test_through_the_shipped_nginx_site(browser: t.Any, nginx_base: str) -> None:
    """/admin passes nginx with its CSP, the event stream opens through it, and a
    state-changing call with the cookie (log out) passes the CSRF check on a port other
    than 443."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=nginx_base, ignore_https_errors=True)
    tab = watched(context.new_page())
    response = tab.goto("/admin")
    assert response.ok
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    log_in(tab)
    expect(tab.get_by_role("heading", name="Virtual machines")).to_be_visible()
    expect(tab.locator("#activity-state")).to_have_text("(live)")
    tab.get_by_role("button", name="Log out").click()
    expect(tab.get_by_role("alert")).to_have_text("Logged out.")
    assert not tab.problems
    context.close()
