import json
from typing import Any

import pytest

from tests.api_support import NPM_UPSTREAM, call, snapshot
from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def server(start_server: StartServer, mail: SmtpServer) -> RunningServer:
    return await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)


def raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


REGISTER_CASES = [
    ("text/plain", raw({"email": "a@example.com"}), 415),
    ("application/x-www-form-urlencoded", b"email=a@example.com", 415),
    ("application/json", b'{"email": "a@example.com"', 400),
    ("application/json", b"", 400),
    ("application/json", b"\xff\xfe{}", 400),
    ("application/json", raw(["a@example.com"]), 400),
    ("application/json", raw({"email": "a@example.com", "pad": "x" * 100_000}), 413),
    ("application/json", raw({}), 400),
    ("application/json", raw({"email": "a@example.com", "admin": True}), 400),
    ("application/json", raw({"email": 42}), 400),
    ("application/json", raw({"email": ["a@example.com"]}), 400),
    ("application/json", raw({"email": "a" * 388 + "@example.com"}), 400),
    ("application/json", raw({"email": "a@example.com\r\nBcc: x@evil.example"}), 400),
    ("application/json", raw({"email": "a@example.com\nSubject: hi"}), 400),
    ("application/json", raw({"email": "not-an-address"}), 400),
    ("application/json", raw({"email": "a@example.com", "language": "fr"}), 400),
    ("application/json", raw({"email": "a@example.com", "language": 1}), 400),
    ("application/json", raw({"email": "a@example.com", "language": "ja\r\nX: y"}), 400),
]


@pytest.mark.parametrize(("content_type", "body", "status"), REGISTER_CASES)
async def test_register__bad_input_is_4xx_and_changes_nothing(
    server: RunningServer, mail: SmtpServer, content_type: str, body: bytes, status: int
) -> None:
    before = snapshot(server.settings.db_path)
    answer = await call(
        server, "POST", "/api/v1/tokens", data=body, headers={"Content-Type": content_type}
    )
    assert answer.status == status
    assert isinstance(answer.body["error"], str)
    assert answer.body["error"]
    assert snapshot(server.settings.db_path) == before
    assert mail.inbox.messages == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "a\x00b"},
        {"name": "ci\r\nX-Injected: 1"},
        {"name": "tab\there"},
        {"name": "x" * 101},
        {"name": ["ci"]},
        {"name": "ci", "token": "pkg_mine"},
    ],
)
async def test_named_create__bad_input_is_400_and_changes_nothing(
    server: RunningServer, body: dict[str, Any]
) -> None:
    me = await server.token()
    before = snapshot(server.settings.db_path)
    answer = await call(server, "POST", "/api/tokens", data=raw(body), headers=JSON, token=me)
    assert answer.status == 400
    assert isinstance(answer.body["error"], str)
    assert snapshot(server.settings.db_path) == before


async def test_named_create__wrong_content_type_415(server: RunningServer) -> None:
    me = await server.token()
    answer = await call(server, "POST", "/api/tokens", data="name=ci", token=me)
    assert (answer.status, answer.body) == (415, {"error": "Content-Type must be application/json"})


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "a@example.com"}, {"email": 1, "code": "ABCDEFGH"}, {"code": ["x"]}, [1]],
)
async def test_reset__bad_input_is_400(server: RunningServer, body: Any) -> None:
    answer = await call(server, "POST", "/api/v1/tokens/reset", data=raw(body), headers=JSON)
    assert answer.status == 400
    assert isinstance(answer.body["error"], str)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "me@example.com"},
        {"email": "me@example.com", "password": 1},
        {"email": "me@example.com\r\n", "password": "x"},
        {"email": "me@example.com", "password": "x" * 2000},
        {"email": "me@example.com", "password": "x", "remember": True},
    ],
)
async def test_login__bad_input_is_400(server: RunningServer, body: dict[str, Any]) -> None:
    answer = await call(server, "POST", "/api/session", data=raw(body), headers=JSON)
    assert answer.status == 400
    assert isinstance(answer.body["error"], str)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer pkg_short",
        "Bearer " + "x" * 5000,
        "Basic !!!",
        "Digest abc",
        "Bearer pkg_" + "A" * 36,
    ],
)
async def test_api_auth__bad_credentials_401_json(server: RunningServer, header: str) -> None:
    answer = await call(server, "GET", "/api/v1/tokens/status", headers={"Authorization": header})
    assert answer.status == 401
    assert isinstance(answer.body["error"], str)
    assert header.split(" ")[-1] not in answer.body["error"] or len(header.split(" ")) == 1


async def test_api__unknown_route_and_method_are_json(server: RunningServer) -> None:
    missing = await call(server, "GET", "/api/v1/nothing")
    assert missing.status == 404
    assert "error" in missing.body
    wrong = await call(server, "PUT", "/api/v1/tokens")
    assert wrong.status == 405
    assert "error" in wrong.body
