"""The OpenAPI document and its public pages.

The document (``/swagger/openapi.json``, also ``/openapi.json``) is what clients are generated
from (docs/api.md), so it must say exactly what the server does: every operation names itself
with an ``operationId`` (``@blp.doc(operationId="createVm")`` on the view), every error is the
``{"message"}`` body, and the fields a response always carries are ``required``
(tests/unit/test_openapi_document.py checks all of it for every route, present and future).
Swagger UI answers at ``/docs``, ``/docs/`` and anything under ``/docs/``.
"""
from __future__ import annotations

import typing as t

import flask_smorest
from flask import Flask, send_from_directory

from app.schemas.fields import ENV_MAP, ENV_MAP_SCHEMA
from app.schemas.vms import ApiErrorSchema

SECURITY = [{"ApiKeyAuth": []}, {"SessionCookie": []}]
SWAGGER_UI_ENDPOINT = "api-docs.openapi_swagger_ui"  # flask-smorest's doc blueprint
BINARY = {"type": "string", "format": "binary"}


class Api(flask_smorest.Api):
    """flask-smorest's Api, documenting the generic error answers (``default``, and the 400 of
    a request body that fails its schema) as our ``{"message"}`` body, which the one error
    handler (app.errors) sends for every status."""

    ERROR_SCHEMA = ApiErrorSchema


def binary_body(content_type: str, description: str) -> dict[str, t.Any]:
    """A required request body of raw bytes, for ``@blp.doc(requestBody=...)``.

    One content type only, even where the server takes aliases (say those in
    ``description``): openapi-python-client (0.29) turns a body with several content types
    into code that does not import (its issues #1451 and #1276).
    """
    return {"required": True, "description": description,
            "content": {content_type: {"schema": BINARY}}}


def add_shared_schemas(api: flask_smorest.Api) -> None:
    """Schemas that fields refer to by name rather than by a marshmallow schema."""
    api.spec.components.schema(ENV_MAP, ENV_MAP_SCHEMA)


def secure_v1_paths(api: flask_smorest.Api) -> None:
    """Declare the two credentials and require one of them on every /v1 operation (call after
    the blueprints are registered)."""
    api.spec.components.security_scheme(
        "ApiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    api.spec.components.security_scheme(
        "SessionCookie", {"type": "apiKey", "in": "cookie", "name": "rds_session"})
    for path, operations in api.spec._paths.items():
        if path.startswith("/v1"):
            for method, operation in operations.items():
                if method != "parameters":
                    operation["security"] = SECURITY


def document_body_limit(api: flask_smorest.Api, max_bytes: int) -> None:
    """The 413 of every operation that takes a JSON body (call after the blueprints are
    registered): Flask refuses a body over ``MAX_CONTENT_LENGTH`` before the view runs, so no
    view documents it itself."""
    error = {"description": f"Body over {max_bytes // (1024 * 1024)} MiB",
             "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ApiError"}}}}
    for operations in api.spec._paths.values():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}) if method != "parameters" else {}
            if "application/json" in body.get("content", {}):
                operation["responses"].setdefault("413", error)


def document_limits(api: flask_smorest.Api, settings: t.Any) -> None:
    """Put this host's configured limits into the request schemas (call after the blueprints
    are registered). The services check them (``MAX_CPU``, ``MAX_EXEC_TIMEOUT_MS``, ...), and
    a value the document allows must not be refused: a generated client, or schemathesis's
    positive-data check, believes the document."""
    bounds: dict[str, dict[str, int]] = {
        "cpu": {"minimum": 1, "maximum": settings.max_cpu},
        "memMb": {"minimum": 128, "maximum": settings.max_mem_mb},
        "diskSizeMb": {"minimum": 1, "maximum": settings.max_disk_size_mb},
        "timeoutMs": {"minimum": 1, "maximum": settings.max_exec_timeout_ms},
        "allowIps": {"maxItems": settings.max_allow_ips}}
    if settings.vm_max_ttl_s:  # every VM has a lifetime here: 0 (never) is refused
        bounds["ttlSeconds"] = {"minimum": 1, "maximum": settings.vm_max_ttl_s}
    targets = {"VmCreate": ("cpu", "memMb", "diskSizeMb", "ttlSeconds", "allowIps"),
               "ImageCreate": ("cpu", "memMb", "diskSizeMb", "allowIps"),
               "NetworkPolicy": ("allowIps",), "Keepalive": ("ttlSeconds",),
               "Exec": ("timeoutMs",), "RunTs": ("timeoutMs",), "RunJs": ("timeoutMs",)}
    schemas = api.spec.components.schemas
    for schema_name, names in targets.items():
        for name in names:
            if name in bounds:
                schemas[schema_name]["properties"][name].update(bounds[name])


def add_doc_routes(app: Flask, api: flask_smorest.Api) -> None:
    """``/openapi.json`` (the contract's second spelling of the document), Swagger UI's assets
    under ``/docs/static/``, and the UI itself at ``/docs/`` and ``/docs/<anything>`` (the
    contract's ``/docs/*``) besides flask-smorest's ``/docs``."""
    import swagger_ui_bundle

    swagger_ui = app.view_functions[SWAGGER_UI_ENDPOINT]

    @app.get("/openapi.json")
    def openapi_json():
        return api.spec.to_dict()

    @app.get("/docs/static/<path:filename>")
    def swagger_static(filename: str):
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    @app.get("/docs/")
    @app.get("/docs/<path:_page>")
    def swagger_ui_pages(_page: str = ""):
        return swagger_ui()
