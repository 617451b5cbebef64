"""Field types shared by the request schemas."""
from __future__ import annotations

import typing as t

from marshmallow import ValidationError, fields

NUL_MESSAGE = "must not contain a NUL character (\\u0000)"


class NulFreeString(fields.String):
    """A string that ends up on a guest's SSH command line (a command, an argument, a flag, an
    environment variable, a path). OpenSSH treats a NUL in an exec request as a protocol error
    and drops the connection, which every command to that VM shares, so NUL is refused here.
    Text sent on stdin (run-ts/run-js ``code``) may hold NUL and uses ``fields.String``."""

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any,
                     **kwargs: t.Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\0" in text:
            raise ValidationError(NUL_MESSAGE)
        return text


class StrictBoolean(fields.Boolean):
    """``true`` or ``false`` only in a JSON body (marshmallow's Boolean also takes 1, "yes",
    "on", ..., which the OpenAPI document's ``type: boolean`` does not allow)."""

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any,
                     **kwargs: t.Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


MAX_ENV_ENTRIES = 256
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 100_000  # as a command; the whole command line is capped by the guest's sshd
ENV_FORMS = "an object {\"KEY\": \"VALUE\"} or a list [\"KEY=VALUE\"]"
# The object form is one named schema in the OpenAPI document (app.api.openapi registers it),
# so that a generated client has one type for it on all three routes. Names as the command
# service takes them (app.services.commands.ENV_NAME, not RDS_EXEC_ID): an object's keys cannot
# carry a pattern in OpenAPI 3.0, so the map says it in words and the list form by pattern.
ENV_MAP = "EnvMap"
ENV_MAP_SCHEMA = {"type": "object", "maxProperties": MAX_ENV_ENTRIES,
                  "additionalProperties": {"type": "string", "maxLength": MAX_ENV_VALUE,
                                           "pattern": "^[^\\x00]*\\Z"},
                  "description": "environment variables by name: [A-Za-z_][A-Za-z0-9_]*, at "
                                 f"most {MAX_ENV_NAME} characters, not RDS_EXEC_ID"}
ENV_ENTRY = {"type": "string", "maxLength": MAX_ENV_NAME + 1 + MAX_ENV_VALUE,
             "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,%d}=[^\\x00]*\\Z" % (MAX_ENV_NAME - 1)}


class EnvVars(fields.Field):
    """A command's environment variables, in either form the original service used: an object
    ``{"KEY": "VALUE"}`` (its exec) or a list ``["KEY=VALUE"]`` (its run-ts/run-js); every
    route takes both. Loads as a dict; a list's later entry for a name wins, as in a shell.

    Names and values go on the guest's command line, so neither may hold NUL, and a name may
    not hold ``=`` (what a name may be beyond that, the command service decides).
    """

    def __init__(self, **kwargs: t.Any) -> None:
        kwargs.setdefault("load_default", dict)
        kwargs.setdefault("metadata", {}).update({
            "description": f"environment variables: {ENV_FORMS}",
            "oneOf": [{"$ref": f"#/components/schemas/{ENV_MAP}"},
                      {"type": "array", "items": ENV_ENTRY, "maxItems": MAX_ENV_ENTRIES}]})
        super().__init__(**kwargs)

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any,
                     **kwargs: t.Any) -> dict[str, str]:
        if isinstance(value, dict):
            pairs = list(value.items())
        elif isinstance(value, list):
            pairs = [_split_entry(index, entry) for index, entry in enumerate(value)]
        else:
            raise ValidationError(f"must be {ENV_FORMS}")
        if len(pairs) > MAX_ENV_ENTRIES:
            raise ValidationError(f"at most {MAX_ENV_ENTRIES} variables")
        for name, text in pairs:
            _check_variable(name, text)
        return dict(pairs)


def _split_entry(index: int, entry: t.Any) -> tuple[str, t.Any]:
    if not isinstance(entry, str):
        raise ValidationError(f"entry {index} is not a string")
    name, sep, text = entry.partition("=")
    if not sep:
        raise ValidationError(f"entry {index} {entry[:100]!r} must look like KEY=VALUE")
    return name, text


def _check_variable(name: str, text: t.Any) -> None:
    shown = name[:100]
    if not isinstance(text, str):
        raise ValidationError(f"the value of {shown!r} is not a string")
    if not 0 < len(name) <= MAX_ENV_NAME or "=" in name:
        raise ValidationError(f"name {shown!r} must be 1..{MAX_ENV_NAME} characters without "
                              f"'='")
    if "\0" in name or "\0" in text:
        raise ValidationError(f"{shown!r}: {NUL_MESSAGE}")
    if len(text) > MAX_ENV_VALUE:
        raise ValidationError(f"the value of {shown!r} is longer than {MAX_ENV_VALUE} "
                              f"characters")
