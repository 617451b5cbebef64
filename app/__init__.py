"""run-dat-sheesh: disposable Linux sandboxes (libvirt VMs) behind a small REST API."""
from __future__ import annotations

import inspect
import logging
import typing as t

from flask import Flask

from app.api.jsonbody import StrictJSONProvider
from app.api.openapi import (Api, add_doc_routes, add_shared_schemas, document_body_limit,
                             document_limits, secure_v1_paths)
from app.config import Settings, load_settings
from app.errors import register_error_handlers
from app.logs import configure_logging

log = logging.getLogger(__name__)
MAX_KNOWN_FUNCTIONS = 4096


class SandboxApp(Flask):
    """Flask, asking once per function whether it is a coroutine function: ``ensure_sync`` runs
    for every before/after-request function, error handler, view and flask-smorest decorator
    layer, ~20 times a request, and ``inspect.iscoroutinefunction`` cost ~3 % of a worker's
    CPU per exec (BENCHMARKS.md, "Session 16"). Bound methods are known by their function
    (a MethodView is made per request); functions made per request (``after_this_request``)
    would fill the memo, which starts over past :data:`MAX_KNOWN_FUNCTIONS`."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._coroutine_functions: dict[t.Any, bool] = {}

    def ensure_sync(self, func: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        known = self._coroutine_functions
        target = getattr(func, "__func__", func)
        coroutine = known.get(target)
        if coroutine is None:
            if len(known) >= MAX_KNOWN_FUNCTIONS:
                known.clear()
            coroutine = known[target] = inspect.iscoroutinefunction(func)
        return self.async_to_sync(func) if coroutine else func


def create_app(test_config: t.Mapping[str, t.Any] | None = None,
               services: t.Any = None) -> Flask:
    """The app factory.

    :param test_config: settings overrides (field or env names), for tests.
    :param services: a prebuilt service bundle (tests inject fakes); built from settings if None.
    :raises ConfigError: when the configuration is invalid.
    """
    settings: Settings = services.settings if services is not None else load_settings(
        overrides=test_config)
    configure_logging(settings.log_level, settings.log_format)
    app = SandboxApp(__name__)
    app.json = StrictJSONProvider(app)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        SESSION_COOKIE_NAME="rds_session",
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,  # JSON bodies; uploads set their own limit
        TESTING=bool((test_config or {}).get("TESTING", False)),
        API_TITLE="run-dat-sheesh",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="swagger/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
    )
    if services is None:
        from app.services.container import build_services
        services = build_services(settings)
    app.extensions["rds"] = services
    warn_about_development_defaults(settings)

    api = Api(app, spec_kwargs={"info": {"description": "Disposable Linux sandboxes."}})
    add_shared_schemas(api)
    from app.api import (admin, api_keys, auth, commands, files, health, hosts, images, limits,
                         observe, snapshots, telemetry, vms, webhooks)
    for blueprint in (health.blp, auth.blp, vms.blp, commands.blp, files.blp, snapshots.blp,
                      observe.blp, images.blp, admin.blp, api_keys.blp, webhooks.blp,
                      hosts.blp):
        api.register_blueprint(blueprint)
    secure_v1_paths(api)
    document_limits(api, settings)
    document_body_limit(api, app.config["MAX_CONTENT_LENGTH"])

    app.session_interface = auth.CookieSessions()
    telemetry.install(app)  # first: the request id and the clock
    app.before_request(auth.require_credentials)
    limits.install(app, settings.long_call_limit)  # after the credential check
    register_error_handlers(app)
    add_doc_routes(app, api)
    from app.api import console
    app.register_blueprint(console.blp)  # /admin: static files, not part of the API document
    if settings.trusted_proxies > 0:  # behind nginx: trust its X-Forwarded-* headers only
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = settings.trusted_proxies
        # x_port: nginx's Host is $host (no port), and a browser's Origin names a port other
        # than 443, which the CSRF check (app.api.auth.check_csrf) compares with.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_port=hops)
    return app


def warn_about_development_defaults(settings: Settings) -> None:
    """Say loudly, at start, which public development defaults are in use (names only; the
    configuration refuses them once the service is reachable from other hosts)."""
    defaults = settings.development_defaults
    if defaults:
        log.warning("DEVELOPMENT DEFAULTS IN USE: %s %s the public development default; "
                    "anyone who can reach this service can use %s. Allowed only on loopback "
                    "(BIND_HOST=%s); set %s before exposing it", ", ".join(defaults),
                    "is" if len(defaults) == 1 else "are",
                    "it" if len(defaults) == 1 else "them", settings.bind_host,
                    " and ".join(defaults))
