"""Property tests: no JSON body a client can send makes a route answer 5xx.

Two kinds of bodies for every JSON route: arbitrary JSON documents (any nesting, huge numbers,
lone surrogates, NUL, odd keys) and bodies shaped like the route's schema whose values are
hostile (wrong types, NUL, surrogates, extremes). Every 4xx must carry a JSON ``message``.
"""
from __future__ import annotations

import json
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from marshmallow import Schema, fields

from app.models import VmSpec
from app.schemas.api_keys import ApiKeyCreateSchema
from app.schemas.auth import LoginSchema
from app.schemas.commands import ExecSchema, RunJsSchema, RunTsSchema
from app.schemas.fields import EnvVars
from app.schemas.images import ImageCreateSchema
from app.schemas.vms import KeepaliveSchema, NetworkPolicySchema, VmCreateSchema, VmPatchSchema

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])

ROUTES: list[tuple[str, str, type[Schema]]] = [
    ("post", "/auth/login", LoginSchema),
    ("post", "/v1/vms", VmCreateSchema),
    ("put", "/v1/vms/{vm}/network", NetworkPolicySchema),
    ("patch", "/v1/vms/{vm}", VmPatchSchema),
    ("post", "/v1/vms/{vm}/keepalive", KeepaliveSchema),
    ("post", "/v1/vms/{vm}/exec", ExecSchema),
    ("post", "/v1/vms/{vm}/run-ts", RunTsSchema),
    ("post", "/v1/vms/{vm}/run-js", RunJsSchema),
    ("post", "/v1/images", ImageCreateSchema),
    ("post", "/v1/admin/api-keys", ApiKeyCreateSchema),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _schema in ROUTES]

HOSTILE_TEXT = st.sampled_from([
    "\0", "a\0b", "\ud800", "\udfff", "x\ud83d", "\U0010ffff", "\u202e", "\n", "\r\n", "",
    " ", "-", "--", "=", "A=", "=B", "..", "../..", "/", "/workspace/../etc", "/home/user",
    "$(id)", "`id`", "'", '"', "\\", "%00", "0.0.0.0/0", "::/0", "1.1.1.1/33", "é" * 3000,
    "x" * 70_000, "--allow-all", "-A", "--inspect", "--unstable", "auto", "pool", "default"])
TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=40), HOSTILE_TEXT)
NUMBERS = st.one_of(
    st.integers(), st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**100, 10**4000]),
    st.floats())
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=25)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def for_field(field: fields.Field) -> st.SearchStrategy:
    """Values of the field's own type, mostly hostile; now and then any JSON at all."""
    if isinstance(field, EnvVars):  # either form, with hostile names and values
        typed = st.one_of(st.dictionaries(TEXT, TEXT, max_size=4), st.lists(TEXT, max_size=4),
                          st.lists(st.tuples(TEXT, TEXT).map("=".join), max_size=4))
    elif isinstance(field, fields.List):
        typed = st.lists(for_field(field.inner), max_size=6)
    elif isinstance(field, fields.Dict):
        typed = st.dictionaries(TEXT, TEXT, max_size=4)
    elif isinstance(field, fields.Boolean):
        typed = st.one_of(st.booleans(), st.sampled_from(["true", "0", "maybe", 1, 2]))
    elif isinstance(field, fields.Integer):
        typed = st.one_of(NUMBERS, st.integers(-2, 300_000))
    else:
        typed = TEXT
    return st.one_of(typed, typed, typed, SCALARS)


def shaped_like(schema: type[Schema]) -> st.SearchStrategy:
    """Dicts holding a subset of the schema's load fields (and now and then a stranger)."""
    loadable = {name: field for name, field in schema().fields.items() if not field.dump_only}
    return st.fixed_dictionaries({}, optional={
        **{name: for_field(field) for name, field in loadable.items()},
        "unexpected": SCALARS})


def encode(document: t.Any) -> str:
    """JSON text; Python refuses to print integers over 4300 digits, so those go raw."""
    try:
        return json.dumps(document)  # a lone surrogate becomes the escape "\ud800"
    except ValueError:
        return '{"cpu": 1%s}' % ("0" * 5000)


@pytest.fixture
def vm_id(services) -> str:
    return services.vms.create(VmSpec(cpu=1, mem_mb=256)).id


def send(client, auth, vm_id: str, route: int, text: str, content_type: str = "application/json"):
    method, path, _schema = ROUTES[route]
    return getattr(client, method)(path.format(vm=vm_id), data=text, headers=auth,
                                   content_type=content_type)


def assert_handled(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get("message"), str), response.text
        assert body["message"]


@pytest.mark.parametrize("route", range(len(ROUTES)), ids=ROUTE_IDS)
@FUZZ
@given(document=JSON)
def test_arbitrary_json_never_5xx(client, auth, vm_id, route, document):
    assert_handled(send(client, auth, vm_id, route, encode(document)))


@pytest.mark.parametrize("route", range(len(ROUTES)), ids=ROUTE_IDS)
@FUZZ
@given(data=st.data())
def test_schema_shaped_hostile_bodies_never_5xx(client, auth, vm_id, route, data):
    body = data.draw(shaped_like(ROUTES[route][2]))
    assert_handled(send(client, auth, vm_id, route, encode(body)))


@pytest.mark.parametrize("route", range(len(ROUTES)), ids=ROUTE_IDS)
@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.sampled_from([
    b"", b"{", b"\xed\xa0\x80", b"\xff\xfe{}", b'{"a":"\\ud800"}', b"null", b"[]", b'"x"',
    deep(100).encode(), deep(5000).encode(), b"1" * 5000, b"NaN", b"\x00"])),
       content_type=st.sampled_from(["application/json", "text/plain",
                                     "application/merge-patch+json", ""]))
def test_raw_bytes_never_5xx(client, auth, vm_id, route, raw, content_type):
    assert_handled(send(client, auth, vm_id, route, raw, content_type))


QUERY_VALUE = st.one_of(TEXT, st.sampled_from(["k=v", "k", "=", "==", "ci.job=42", "%00", "%ff",
                                               "RUNNING", "0", "-1", "99999999999999999999"]))


@pytest.mark.parametrize("method", ["get", "delete"])
@FUZZ
@given(params=st.lists(st.tuples(st.sampled_from(["label", "state", "limit", "cursor", "wait",
                                                  "x"]), QUERY_VALUE), max_size=5))
def test_hostile_list_and_delete_queries_never_5xx(client, auth, vm_id, method, params):
    from urllib.parse import quote
    # Lone surrogates go as the bytes they would be (%ED%A0%80: not UTF-8).
    query = "&".join(f"{key}={quote(value.encode('utf-8', 'surrogatepass'), safe='%=')}"
                     for key, value in params)
    assert_handled(getattr(client, method)(f"/v1/vms?{query}", headers=auth))
