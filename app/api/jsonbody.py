"""Request bodies as JSON the service can hold: bounded nesting, valid Unicode, no NaN.

``json.loads`` alone accepts documents that later break a request in odd places: a lone
surrogate escape (``"\\ud800"``) is a ``str`` Python cannot encode (a 500 wherever the value is
encoded, e.g. the login compare or the SSH command line); deep nesting raises
``RecursionError``; an integer of more than 4,300 digits raises a bare ``ValueError``. Every
JSON body goes through :func:`load_document`, through the webargs parser (app.api) and Flask's
own ``request.get_json`` (:class:`StrictJSONProvider`), so each of these is a 400.
"""
from __future__ import annotations

import json
import typing as t

from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 64  # containers inside containers; our bodies need 2


class InvalidJson(ValueError):
    """The body is not a JSON document the service accepts; the message says why."""


def load_document(data: bytes | str, max_depth: int = MAX_DEPTH) -> t.Any:
    """Parse one JSON document strictly.

    :param data: the body (UTF-8 when bytes).
    :param max_depth: how deeply arrays and objects may nest.
    :raises InvalidJson: not UTF-8, not JSON, nested too deeply, a lone surrogate in a string
        or key, a number Python will not parse, or NaN/Infinity.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidJson(f"nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string ..."
        raise InvalidJson(str(exc).split(";")[0]) from None
    _check_tree(document, max_depth)
    return document


def _refuse_constant(name: str) -> t.NoReturn:
    raise InvalidJson(f"{name} is not a JSON value")


def _check_tree(document: t.Any, max_depth: int) -> None:
    """Walk the parsed document without recursion: depth and every string and key."""
    stack: list[tuple[t.Any, int, t.Any]] = [(document, 0, None)]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise InvalidJson(f"nested more than {max_depth} levels deep")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str):
                    _check_text(key, where, is_key=True)
                if isinstance(value, (str, dict, list)):
                    stack.append((value, depth + 1, (where, key)))


def _check_text(text: str, where: t.Any, is_key: bool = False) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        what = "a key" if is_key else "the string"
        raise InvalidJson(f"{what} at {_render(where)} holds a lone surrogate "
                          f"({text[exc.start]!r}), which is not Unicode text") from None


def _render(where: t.Any) -> str:
    """``(((None, 'env'), 'A'))`` → ``$.env.A``; list indexes as ``[0]``."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    path = "$" + "".join(reversed(parts))
    return path if len(path) <= 200 else path[:197] + "..."


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with :func:`load_document` for ``request.get_json`` (which answers 400 on
    the ``ValueError`` that :class:`InvalidJson` is)."""

    def loads(self, s: str | bytes, **kwargs: t.Any) -> t.Any:
        return load_document(s)
