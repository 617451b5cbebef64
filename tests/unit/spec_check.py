"""Answers checked against the OpenAPI document.

Every answer a unit test gets from an API route must be one its operation documents: the
status (or ``default``), the content type, and for JSON the schema, with OpenAPI 3.0's rules
for ``required``, ``nullable``, ``enum``, ``additionalProperties`` and ``oneOf``. A field the
server sometimes leaves out but the document marks required, or a null it does not mark
nullable, breaks a generated client; here it fails the test that provoked it (see the ``app``
fixture in conftest.py).
"""
from __future__ import annotations

import re
import typing as t

TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,),
                                      "number": (int, float), "boolean": (bool,),
                                      "array": (list,), "object": (dict,)}
FLASK_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


class SpecChecker:
    """Collects every way the app's answers differ from ``document``."""

    def __init__(self, document: dict[str, t.Any]) -> None:
        self.document = document
        self.violations: list[str] = []

    def check(self, method: str, rule: str, response: t.Any) -> None:
        """Check one answer; ``rule`` is Flask's URL rule (``/v1/vms/<vm_id>``)."""
        path = FLASK_PARAM.sub(r"{\1}", rule)
        operation = self.document["paths"].get(path, {}).get(method.lower())
        if operation is None:
            return  # not an operation of the document (Swagger UI, its assets)
        where = f"{method} {path} -> {response.status_code}"
        responses = operation["responses"]
        documented = responses.get(str(response.status_code), responses.get("default"))
        if documented is None:
            self.violations.append(f"{where}: status not documented")
            return
        content = self.resolve(documented).get("content", {})
        if not content:
            if response.status_code != 204 and not response.is_streamed and response.data:
                self.violations.append(f"{where}: a body ({response.mimetype}) where the "
                                       f"document has none")
            return
        if response.mimetype not in content:
            self.violations.append(f"{where}: {response.mimetype} is not one of {set(content)}")
            return
        if response.mimetype == "application/json" and not response.is_streamed:
            self.violations.extend(f"{where}: {problem}" for problem in self.validate(
                content["application/json"].get("schema", {}), response.get_json(), "$"))

    def resolve(self, node: dict[str, t.Any]) -> dict[str, t.Any]:
        """Follow ``$ref`` (``#/components/...``) to what it names."""
        while "$ref" in node:
            target: t.Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def validate(self, schema: dict[str, t.Any], value: t.Any, at: str) -> list[str]:
        """What is wrong with ``value`` against ``schema`` (empty when it matches)."""
        schema = self.resolve(schema)
        if value is None:
            return [] if schema.get("nullable") else [f"{at} is null; not nullable"]
        alternatives = schema.get("oneOf") or schema.get("anyOf")
        if alternatives:
            if all(self.validate(option, value, at) for option in alternatives):
                return [f"{at} matches none of its oneOf/anyOf schemas"]
            return []
        kind = schema.get("type")
        if kind and (not isinstance(value, TYPES[kind])
                     or (isinstance(value, bool) and kind != "boolean")):
            return [f"{at} is {type(value).__name__}, documented as {kind}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{at} {value!r} is not one of {schema['enum']}"]
        if isinstance(value, list):
            return [problem for index, item in enumerate(value)
                    for problem in self.validate(schema.get("items", {}), item, f"{at}[{index}]")]
        if isinstance(value, dict):
            return self._validate_object(schema, value, at)
        return []

    def _validate_object(self, schema: dict[str, t.Any], value: dict, at: str) -> list[str]:
        problems = [f"{at}.{name} is required but missing" for name in schema.get("required", ())
                    if name not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += self.validate(properties[name], item, f"{at}.{name}")
            elif extra is False:
                problems.append(f"{at}.{name} is not documented")
            elif isinstance(extra, dict):
                problems += self.validate(extra, item, f"{at}.{name}")
        return problems


_DOCUMENT: list[dict[str, t.Any]] = []  # the same for every app: read once per session


def install(app: t.Any) -> SpecChecker:
    """Check every answer ``app`` gives against its own OpenAPI document."""
    from flask import request

    if not _DOCUMENT:
        api = next(iter(app.extensions["flask-smorest"]["blp_name_to_api"].values()))
        _DOCUMENT.append(api.spec.to_dict())
    checker = SpecChecker(_DOCUMENT[0])

    @app.after_request
    def check_answer(response):
        if request.url_rule is not None:
            checker.check(request.method, request.url_rule.rule, response)
        return response

    return checker
