"""Fuzzing the token API: generated bodies, headers, query strings and path values against every
route of a running server.  Whatever arrives, the answer is a documented status, never a 5xx or a
traceback, errors are ``{"error": ...}``, successes match the documented schema, no presented
secret is echoed, and the database is consistent afterwards."""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.api_support import NPM_UPSTREAM
from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer, smtp_server
from tokenapi import tokens
from tokenapi.passwords import hash_password_async
from tokenapi.webauth import session_digest

PASSWORD = "fuzz-password-1"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# What a route answers when the generated path value changes which route matches at all.
ROUTING = {404, 405}
FUZZ_EXAMPLES = 400

# -- a minimal JSON Schema check for the subset the document uses -------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def conforms(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Problems of ``value`` against ``schema`` (type, required, properties, items, enum)."""
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(
            isinstance(value, _TYPES[k]) and not (k in {"integer", "number"} and value is True)
            for k in kinds
        )
        if not ok:
            return [f"{where}: {type(value).__name__} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(f"{where}: missing {name}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                problems += conforms(item, props[name], f"{where}.{name}")
            elif isinstance(extra, dict):
                problems += conforms(item, extra, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += conforms(item, schema["items"], f"{where}[{i}]")
    return problems


def test_conforms__detects_mismatches() -> None:
    schema = {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string"}, "kind": {"enum": ["a"]}},
    }
    assert conforms({"id": "x", "kind": "a"}, schema) == []
    assert conforms({"kind": "b"}, schema) == ["$: missing id", "$.kind: 'b' not in ['a']"]
    assert conforms([], schema) == ["$: list is not ['object']"]
    assert conforms({"id": 1}, schema) == ["$.id: int is not ['string']"]


# -- the server under fuzz ----------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # relative to /api, with {params}
    statuses: frozenset[int]
    results: dict[int, dict[str, Any]]
    fields: tuple[str, ...]  # the documented body's properties


@dataclass
class Target:
    server: RunningServer
    http: aiohttp.ClientSession
    operations: list[Operation]
    session_cookie: str
    known_token_ids: list[str]
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return str(self.server.url.origin())


@pytest.fixture
def mail() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
async def target(start_server: StartServer, mail: SmtpServer) -> Any:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
    admin = await server.store.create_user(
        "admin@example.com", is_admin=True, password_hash=await hash_password_async(PASSWORD)
    )
    await server.store.create_user(
        "user@example.com", password_hash=await hash_password_async(PASSWORD)
    )
    cookie = secrets.token_urlsafe(32)
    await server.store.create_session(session_digest(cookie), admin.id, lifetime=3600)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(server.url / "api" / "openapi.json") as resp:
            doc = await resp.json()
        operations = [
            Operation(
                method.upper(),
                path,
                frozenset(int(s) for s in op["responses"]),
                {
                    int(s): r["content"]["application/json"]["schema"]
                    for s, r in op["responses"].items()
                    if int(s) < 400 and "content" in r
                },
                tuple(
                    op.get("requestBody", {})
                    .get("content", {})
                    .get("application/json", {})
                    .get("schema", {})
                    .get("properties", {})
                ),
            )
            for path, ops in doc["paths"].items()
            for method, op in ops.items()
        ]
        target = Target(server, http, operations, cookie, [])
        # Every operation once with a plain request before the fuzz, so each is reached whatever
        # Hypothesis draws (its choice among 22 operations is not uniform: once one was left out).
        for op in operations:
            await send(target, plain_request(op))
        yield target
    # Once every example ran: the fuzz got past authentication and validation, not just
    # bounced off them.
    assert target.requests >= FUZZ_EXAMPLES
    assert {200, 400, 401, 403, 405}.issubset(target.statuses), target.statuses
    assert len({(m, p) for m, p, _ in target.seen}) == len(target.operations)


# -- strategies ---------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_TEXT = st.text(PRINTABLE, max_size=80)
ANY_TEXT = st.text(max_size=60)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=10,
)
emails = st.sampled_from(
    ["admin@example.com", "USER@example.com", "new@example.com", "a@b", "x@example.com\r\n"]
) | st.builds(lambda n: f"fuzz{n}@example.com", st.integers(0, 50))
field_values = {
    "email": emails | json_values,
    "language": st.sampled_from(["en", "ja", "fr", "", "EN"]) | json_values,
    "password": st.sampled_from([PASSWORD, "wrong", ""]) | json_values,
    "name": st.sampled_from(["ci", "laptop", " ", "a\r\nb", "x" * 101]) | json_values,
    "code": st.text(st.sampled_from("ABCDEFGHJKMNPQRSTUVWXYZ23456789- "), max_size=12)
    | json_values,
}
known_fields = st.dictionaries(
    st.sampled_from(sorted(field_values)), st.just(None), max_size=4
).flatmap(
    lambda keys: st.fixed_dictionaries({k: field_values[k] for k in keys}) if keys else st.just({})
)
well_formed = known_fields.map(lambda d: json.dumps(d).encode())
bodies = st.one_of(
    well_formed,
    well_formed,
    well_formed,
    st.none(),
    st.tuples(known_fields, st.dictionaries(ANY_TEXT, json_values, max_size=2)).map(
        lambda p: json.dumps({**p[0], **p[1]}).encode()
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"{", b'{"email": "a@example.com"', b"\xff\xfe{}", b"null", b"[]"]),
    st.just(orjson.dumps({"email": "big@example.com", "pad": "x" * 70_000})),
)
content_types = st.one_of(
    # Weighted towards JSON so that most bodies get past the Content-Type check.
    st.just("application/json"),
    st.just("application/json"),
    st.just("application/json"),
    st.sampled_from(
        [
            None,
            "application/json; charset=utf-8",
            "Application/JSON",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-16",
            ";;;",
        ]
    ),
    HEADER_TEXT,
)


good_values = {
    "email": emails,
    "language": st.sampled_from(["en", "ja"]),
    "password": st.sampled_from([PASSWORD, "wrong"]),
    "name": st.text(PRINTABLE, min_size=1, max_size=20),
    "code": st.text(st.sampled_from("ABCDEFGHJKMNPQRSTUVWXYZ23456789"), min_size=8, max_size=8),
}


def documented_body(names: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """A JSON object with some of the route's own fields, mostly plausible values: gets past
    the unknown-field check and into the handler."""
    return st.fixed_dictionaries(
        {},
        optional={
            n: st.one_of(good_values.get(n, json_values), field_values.get(n, json_values))
            for n in names
        },
    ).map(lambda d: json.dumps(d).encode())


@st.composite
def requests(draw: st.DrawFn, operations: list[Operation]) -> dict[str, Any]:
    op = draw(st.sampled_from(operations))
    method = op.method if draw(st.integers(0, 9)) else draw(st.sampled_from(METHODS))
    path_value = draw(
        st.sampled_from(["known", "uuid", "text", "tricky"]) if "{" in op.path else st.just("")
    )
    tricky = st.sampled_from(
        [
            "..",
            "%2e%2e",
            "%2F",
            "%252F",
            "a%00b",
            "%ff",
            "%20",
            "00000000-0000-0000-0000-000000000000",
        ]
    )
    param = {
        "known": st.just("KNOWN"),
        "uuid": st.uuids().map(str),
        "text": ANY_TEXT.filter(bool).map(lambda t: quote(t, safe="")),
        "tricky": tricky,
        "": st.just(""),
    }[path_value]
    query = draw(
        st.dictionaries(
            st.sampled_from(["email", "id", "q", "", "a[b]"]) | ANY_TEXT,
            st.sampled_from(["admin@example.com", "bad", ""]) | ANY_TEXT,
            max_size=3,
        )
    )
    return {
        "op": op,
        "method": method,
        "param": draw(param),
        "query": query,
        "auth": draw(
            st.sampled_from(
                ["none", "valid", "valid", "admin", "admin", "random", "bad", "basic", "junk"]
            )
        ),
        "junk_auth": draw(HEADER_TEXT),
        "cookie": draw(st.sampled_from(["none", "valid", "junk"])),
        "origin": draw(st.sampled_from(["none", "same", "evil", "junk"])),
        "junk": draw(HEADER_TEXT),
        "content_type": draw(content_types),
        "body": draw(st.one_of(documented_body(op.fields), documented_body(op.fields), bodies)),
        "extra": draw(
            st.dictionaries(
                st.sampled_from(["X-Forwarded-For", "Accept", "Accept-Encoding", "X-Fuzz", "Host"]),
                HEADER_TEXT,
                max_size=2,
            )
        ),
    }


def plain_request(op: Operation) -> dict[str, Any]:
    """A documented request to ``op`` as an admin with a session from the same origin."""
    return {
        "op": op,
        "method": op.method,
        "param": "KNOWN" if "{" in op.path else "",
        "query": {},
        "auth": "admin",
        "junk_auth": "",
        "cookie": "valid",
        "origin": "same",
        "junk": "",
        "content_type": "application/json",
        "body": b"{}",
        "extra": {},
    }


# -- the fuzz loop ------------------------------------------------------------------------------


async def send(target: Target, req: dict[str, Any]) -> None:
    server = target.server
    op: Operation = req["op"]
    # A method drawn at random may be another documented operation of the same path.
    op = next((o for o in target.operations if (o.method, o.path) == (req["method"], op.path)), op)
    param = req["param"]
    if param == "KNOWN":
        param = target.known_token_ids[-1] if target.known_token_ids else str(uuid.uuid4())
    path = "/api" + op.path.replace("{id}", param)
    query = urlencode(req["query"])
    url = URL(str(server.url) + path + ("?" + query if query else ""), encoded=True)

    headers: dict[str, str] = {}
    presented: list[str] = []
    auth = req["auth"]
    if auth in {"valid", "admin"}:
        email = "admin@example.com" if auth == "admin" else "user@example.com"
        secret = await server.token(email)
        (token,) = [t for t in await server.store.list_tokens(email=email) if t.name == "test"][:1]
        target.known_token_ids.append(token.id)
        headers["Authorization"] = f"Bearer {secret}"
        presented.append(secret)
    elif auth == "random":
        secret = tokens.generate()
        headers["Authorization"] = f"Bearer {secret}"
        presented.append(secret)
    elif auth == "bad":
        headers["Authorization"] = "Bearer pkg_" + secrets.token_hex(18)
    elif auth == "basic":
        secret = tokens.generate()
        headers["Authorization"] = "Basic " + base64.b64encode(f"u:{secret}".encode()).decode()
        presented.append(secret)
    elif auth == "junk":
        headers["Authorization"] = req["junk_auth"]
    if req["cookie"] == "valid":
        headers["Cookie"] = f"pkgate_session={target.session_cookie}"
        presented.append(target.session_cookie)
    elif req["cookie"] == "junk":
        headers["Cookie"] = req["junk"]
    origin = {"same": target.origin, "evil": "http://evil.example", "junk": req["junk"]}
    if req["origin"] in origin:
        headers["Origin"] = origin[req["origin"]]
    if req["content_type"] is not None:
        headers["Content-Type"] = req["content_type"]
    for name, value in req["extra"].items():
        headers.setdefault(name, value)

    async with target.http.request(
        req["method"], url, data=req["body"], headers=headers, allow_redirects=False
    ) as resp:
        raw = await resp.read()
        status = resp.status
        target.requests += 1
        target.statuses[status] = target.statuses.get(status, 0) + 1
        target.seen.add((op.method, op.path, status))
        context = f"{req['method']} {url} -> {status} {raw[:300]!r}"

        assert status < 500, context
        assert b"Traceback" not in raw, context
        assert b'File "' not in raw, context
        everything = raw + str(resp.headers).encode()
        for secret in presented:
            assert secret.encode() not in everything, context

        # A path value with "/", "{" or "}" (decoded), or one that normalises away, makes
        # another route (or none) match: 404/405 from the router are then the right answers.
        decoded = unquote(param)
        same_route = req["method"] == op.method and not set(decoded) & set("/{}")
        if same_route and decoded.strip(" .") != "":
            assert status in op.statuses, context
        else:
            assert status in op.statuses | ROUTING | {400, 401, 403}, context
        body = orjson.loads(raw) if resp.content_type == "application/json" else None
        if status >= 400:
            assert resp.content_type == "application/json", context
            assert isinstance(body, dict), context
            assert set(body) == {"error"}, context
            assert isinstance(body["error"], str), context
            assert body["error"], context
        elif same_route and status in op.results:
            assert conforms(body, op.results[status]) == [], context
        if status == 429:
            assert resp.headers["Retry-After"].isdigit(), context
        if status == 405:
            assert "Allow" in resp.headers, context


def consistency_problems(db_path: Path) -> list[Any]:
    """Rows that break an invariant of the store (empty when all is well)."""
    checks = {
        "orphan tokens": "SELECT t.id FROM tokens t LEFT JOIN users u ON u.id = t.user_id"
        " WHERE u.id IS NULL",
        "duplicate digests": "SELECT digest FROM tokens GROUP BY digest HAVING count(*) > 1",
        "two active email tokens": "SELECT user_id FROM tokens WHERE kind = 'email'"
        " AND revoked_at IS NULL GROUP BY user_id HAVING count(*) > 1",
        "orphan sessions": "SELECT s.digest FROM sessions s LEFT JOIN users u"
        " ON u.id = s.user_id WHERE u.id IS NULL",
        "orphan reset codes": "SELECT r.id FROM reset_codes r LEFT JOIN users u"
        " ON u.id = r.user_id WHERE u.id IS NULL",
        "duplicate emails": "SELECT lower(email) FROM users GROUP BY lower(email)"
        " HAVING count(*) > 1",
        "revoked token not logged": "SELECT t.id FROM tokens t WHERE t.revoked_at IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.digest = t.digest)",
        "foreign keys": "PRAGMA foreign_key_check",
    }
    with sqlite3.connect(db_path) as db:
        problems: list[Any] = [
            (name, rows) for name, sql in checks.items() if (rows := db.execute(sql).fetchall())
        ]
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
    if integrity != "ok":
        problems.append(("integrity", integrity))
    return problems


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
async def test_fuzz_api__every_route_answers_documented_statuses_and_store_stays_consistent(
    target: Target, data: st.DataObject
) -> None:
    await send(target, data.draw(requests(target.operations)))
    assert consistency_problems(target.server.settings.db_path) == []
