"""Long calls never starve cheap ones (app.api.limits): with every long-call slot of a worker
taken, another long call is 429 with Retry-After at once, and health checks and reads answer."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from app import create_app
from app.models import CommandResult, VmSpec
from tests.unit.fakes import API_KEY


class BlockingCommands:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = threading.Semaphore(0)

    def exec(self, *_args) -> CommandResult:
        self.running.release()
        self.release.wait(10)
        return CommandResult(exit_code=0, stdout=b"", stderr=b"")


@pytest.fixture
def busy_app(services):
    services.settings = dataclasses.replace(services.settings, web_threads=4,
                                            long_call_slots=2)
    services.commands = BlockingCommands()
    vm = services.vms.create(VmSpec(cpu=1, mem_mb=256))
    app = create_app({"TESTING": True}, services=services)
    yield app, services.commands, vm.id
    services.commands.release.set()


def test_cheap_calls_answer_while_every_long_slot_is_busy(busy_app):
    app, commands, vm_id = busy_app
    headers = {"X-API-Key": API_KEY}
    answers: list[int] = []

    def long_exec() -> None:
        response = app.test_client().post(f"/v1/vms/{vm_id}/exec", json={"cmd": "sleep 9"},
                                          headers=headers)
        answers.append(response.status_code)

    workers = [threading.Thread(target=long_exec) for _ in range(2)]
    for worker in workers:
        worker.start()
    for _ in workers:
        assert commands.running.acquire(timeout=5)  # both slots are taken now

    started = time.monotonic()
    third = app.test_client().post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"},
                                   headers=headers)
    assert third.status_code == 429 and third.headers["Retry-After"] == "2"
    assert "long calls" in third.get_json()["message"]
    assert app.test_client().get("/healthz").status_code == 200
    assert app.test_client().get("/v1/vms", headers=headers).status_code == 200
    assert time.monotonic() - started < 1.0

    commands.release.set()
    for worker in workers:
        worker.join(timeout=5)
    assert answers == [200, 200]
    # The slots are given back: the next long call runs.
    assert app.test_client().post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"},
                                  headers=headers).status_code == 200


def test_slots_default_to_all_threads_but_four():
    from app.config import load_settings
    assert load_settings({}, {"WEB_THREADS": "16"}).long_call_limit == 12
    # The default: one worker takes 16 concurrent long calls with threads to spare.
    assert load_settings({}, {}).web_threads == 32
    assert load_settings({}, {}).long_call_limit == 28
    assert load_settings({}, {"WEB_THREADS": "2"}).long_call_limit == 1
    assert load_settings({}, {"WEB_THREADS": "8", "LONG_CALL_SLOTS": "3"}).long_call_limit == 3
