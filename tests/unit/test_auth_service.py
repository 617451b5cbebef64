"""AuthService on a real SQLite file: login rate limits with backoff, server-side sessions."""
from __future__ import annotations

import threading

import pytest

from app.errors import RateLimited, Unauthorized
from app.services.auth import AuthService
from tests.unit.fakes import ADMIN_EMAIL, ADMIN_PASSWORD, auth_service, unit_settings

WRONG = "wrong-password"


@pytest.fixture
def settings(tmp_path):
    return unit_settings(tmp_path)


@pytest.fixture
def auth(settings, clock) -> AuthService:
    return auth_service(settings, clock)


def fail(auth: AuthService, times: int, email: str = ADMIN_EMAIL,
         address: str = "192.0.2.1") -> None:
    for _ in range(times):
        with pytest.raises(Unauthorized):
            auth.login(email, WRONG, address)


def locked_for(auth: AuthService, email: str = ADMIN_EMAIL, address: str = "192.0.2.1",
               password: str = WRONG) -> int:
    with pytest.raises(RateLimited) as caught:
        auth.login(email, password, address)
    return caught.value.retry_after_s


def test_five_failures_lock_the_address_and_account_even_for_the_right_password(auth):
    fail(auth, 5)
    assert locked_for(auth) == 1
    assert locked_for(auth, password=ADMIN_PASSWORD) == 1


def test_lockout_doubles_per_failure_and_is_capped(auth, clock):
    fail(auth, 5)
    waits = []
    for _ in range(14):
        wait = locked_for(auth)
        waits.append(wait)
        clock.advance(wait)
        fail(auth, 1)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]


def test_a_locked_attempt_is_not_counted(auth, clock):
    fail(auth, 5)
    for _ in range(10):
        assert locked_for(auth) == 1
    clock.advance(1)
    fail(auth, 1)
    assert locked_for(auth) == 2


def test_the_address_is_limited_whatever_the_email(auth):
    for index in range(5):
        fail(auth, 1, email=f"guess{index}@example.com")
    assert locked_for(auth, email="another@example.com") == 1
    # Another address may still try the admin account.
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.99")


def test_the_account_is_limited_whatever_the_address(auth):
    for index in range(5):
        fail(auth, 1, address=f"198.51.100.{index}")
    assert locked_for(auth, address="203.0.113.7") == 1
    assert locked_for(auth, email=" Admin@Test.Example ", address="203.0.113.8") == 1
    with pytest.raises(Unauthorized):  # another account from a fresh address: only counted
        auth.login("someone@else", WRONG, "203.0.113.9")


def test_success_resets_the_accounts_count(auth):
    fail(auth, 4, address="198.51.100.1")
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "198.51.100.2")
    fail(auth, 4, address="198.51.100.3")
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "198.51.100.4")


def test_counts_are_forgotten_a_window_after_the_lockout(auth, clock, settings):
    fail(auth, 5)
    clock.advance(1 + settings.login_failure_window_s + 1)
    fail(auth, 4)
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1")


def test_limits_hold_across_worker_processes(settings, clock):
    worker_a, worker_b = auth_service(settings, clock), auth_service(settings, clock)
    fail(worker_a, 3)
    fail(worker_b, 2)
    assert locked_for(worker_a) == 1
    assert locked_for(worker_b) == 1


def test_a_session_lives_until_logout(auth):
    opened = auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1")
    assert opened.email == ADMIN_EMAIL
    assert len(opened.token) >= 40
    assert auth.session_email(opened.token) == ADMIN_EMAIL
    auth.logout(opened.token)
    assert auth.session_email(opened.token) is None
    auth.logout(opened.token)  # twice is fine


def test_each_login_is_its_own_session(auth):
    first = auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1")
    second = auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1")
    assert first.token != second.token
    auth.logout(first.token)
    assert auth.session_email(second.token) == ADMIN_EMAIL


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "A" * 5000])
def test_unknown_tokens_are_no_session(auth, token):
    assert auth.session_email(token) is None


@pytest.mark.parametrize("change", [{"ADMIN_PASSWORD": "a-new-password"},
                                   {"SESSION_SECRET": "another-session-secret"},
                                   {"ADMIN_EMAIL": "new-admin@test.example"}])
def test_a_restart_with_new_credentials_ends_older_sessions(tmp_path, clock, change):
    before = auth_service(unit_settings(tmp_path), clock)
    token = before.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1").token
    after = auth_service(unit_settings(tmp_path, **change), clock)
    assert after.session_email(token) is None
    assert auth_service(unit_settings(tmp_path), clock).session_email(token) == ADMIN_EMAIL


def test_an_idle_session_expires(auth, clock, settings):
    token = auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1").token
    clock.advance(settings.session_idle_timeout_s - 60)
    assert auth.session_email(token) == ADMIN_EMAIL  # use keeps it alive
    clock.advance(settings.session_idle_timeout_s - 60)
    assert auth.session_email(token) == ADMIN_EMAIL
    clock.advance(settings.session_idle_timeout_s + 1)
    assert auth.session_email(token) is None


def test_a_used_session_still_ends_at_its_maximum_age(auth, clock, settings):
    token = auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1").token
    step = settings.session_idle_timeout_s // 2
    for _ in range(settings.session_max_age_s // step - 1):
        clock.advance(step)
        assert auth.session_email(token) == ADMIN_EMAIL
    clock.advance(step + 1)
    assert auth.session_email(token) is None


def test_sessions_and_counts_do_not_pile_up(auth, clock, settings):
    for index in range(20):
        fail(auth, 1, email=f"{index}@x", address=f"198.51.100.{index}")
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.1")
    clock.advance(settings.session_max_age_s + settings.login_failure_window_s
                  + settings.login_max_lockout_s + 1)
    fail(auth, 1)
    auth.login(ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.2")
    with auth.store.transaction(write=False) as conn:
        assert conn.execute("SELECT count(*) FROM login_failures").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


def test_concurrent_failures_are_all_counted(auth):
    """gthread workers: many threads, one connection each, every failure counted once."""
    def attempt(index: int) -> None:
        with pytest.raises(Unauthorized):
            auth.login(ADMIN_EMAIL, WRONG, f"198.51.100.{index}")

    threads = [threading.Thread(target=attempt, args=(index,)) for index in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert locked_for(auth, address="203.0.113.1") == 1
