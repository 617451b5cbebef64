"""What every request costs a worker: work that an API-key call does not need is skipped
(BENCHMARKS.md, "Load": exec throughput against raw SSH)."""
from __future__ import annotations

from flask.sessions import SecureCookieSessionInterface

from app.api import Blueprint
from app.schemas.commands import ExecSchema


def test_a_call_without_the_session_cookie_builds_no_signing_serializer(client, auth,
                                                                        monkeypatch):
    made = []
    real = SecureCookieSessionInterface.get_signing_serializer

    def counting(self, app):
        made.append(1)
        return real(self, app)

    monkeypatch.setattr(SecureCookieSessionInterface, "get_signing_serializer", counting)
    assert client.get("/v1/vms", headers=auth).status_code == 200
    assert made == []


def test_the_admin_session_still_works_through_its_cookie(client, session):
    assert client.get("/v1/vms").status_code == 401
    assert session.login().status_code == 200
    assert client.get("/v1/vms").status_code == 200  # the cookie is read and checked
    client.set_cookie("rds_session", "forged", domain="localhost")
    assert client.get("/v1/vms").status_code == 401


def test_a_route_loads_its_body_with_one_schema_instance(monkeypatch):
    given = []
    monkeypatch.setattr("flask_smorest.Blueprint.arguments",
                        lambda self, schema, *args, **kwargs: given.append(schema))
    Blueprint("t", __name__).arguments(ExecSchema)
    instance = ExecSchema()
    Blueprint("u", __name__).arguments(instance)
    assert isinstance(given[0], ExecSchema) and given[1] is instance


def test_the_app_asks_once_per_function_whether_it_is_a_coroutine(monkeypatch) -> None:
    """SandboxApp.ensure_sync: a plain function comes back as it is, asked about once; a
    bound method is known by its function; an async one is still wrapped."""
    import inspect

    from app import SandboxApp

    app = SandboxApp(__name__)
    asked: list[object] = []
    real = inspect.iscoroutinefunction
    monkeypatch.setattr(inspect, "iscoroutinefunction",
                        lambda func: asked.append(func) or real(func))

    def plain() -> str:
        return "plain"

    class View:
        def get(self) -> str:
            return "view"

    for _ in range(5):
        assert app.ensure_sync(plain) is plain
        method = View().get
        assert app.ensure_sync(method) is method
    assert len(asked) == 2

    async def coroutine() -> str:
        return "async"

    monkeypatch.setattr(app, "async_to_sync", lambda func: ("wrapped", func))
    assert app.ensure_sync(coroutine) == ("wrapped", coroutine)
    assert app.ensure_sync(coroutine) == ("wrapped", coroutine)
