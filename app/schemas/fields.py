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
