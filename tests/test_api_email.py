import logging
import time

import pytest

from tests.api_support import (
    NPM_UPSTREAM,
    PYPI_UPSTREAM,
    call,
    code_in,
    execute,
    snapshot,
    tokens_in,
)
from tests.conftest import RunningServer, StartServer, free_port
from tests.smtp import SmtpServer


@pytest.fixture
async def server(start_server: StartServer, mail: SmtpServer) -> RunningServer:
    return await start_server(
        npm_upstream=NPM_UPSTREAM, pypi_upstream=PYPI_UPSTREAM, smtp_url=mail.url
    )


async def register(server: RunningServer, email: str = "dev@example.com", **extra: str):  # type: ignore[no-untyped-def]
    return await call(server, "POST", "/api/v1/tokens", json={"email": email, **extra})


async def whoami(server: RunningServer, token: str) -> int:
    return (await call(server, "GET", "/npm/-/whoami", token=token)).status


async def registered(
    server: RunningServer, mail: SmtpServer, email: str = "dev@example.com"
) -> str:
    answer = await register(server, email)
    assert answer.status == 202
    (secret,) = set(tokens_in(mail.inbox.text()))
    return secret


async def test_register__welcome_mail_holds_working_token_and_setup(
    server: RunningServer, mail: SmtpServer
) -> None:
    answer = await register(server, "Dev@Example.com")
    assert answer.status == 202
    assert set(answer.body) == {"message"}
    message = mail.inbox.only()
    assert message["To"] == "dev@example.com"
    assert message["Subject"] == "Your pkgate token"
    text = mail.inbox.text()
    (secret,) = set(tokens_in(text))
    assert secret not in answer.raw.decode()
    who = await call(server, "GET", "/npm/-/whoami", token=secret)
    assert (who.status, who.body) == (200, {"username": "dev@example.com"})
    base = str(server.url)
    hostport = f"{server.url.host}:{server.url.port}"
    for expected in (
        f"registry={base}/npm/",
        f"//{hostport}/npm/:_authToken={secret}",
        f'npmRegistryServer: "{base}/npm"',
        "npmAlwaysAuth: true",
        f'npmAuthToken: "{secret}"',
        f'registry = {{ url = "{base}/npm/", token = "{secret}" }}',
        f"pip config set global.index-url http://token:{secret}@{hostport}/pypi/simple/",
        f'url = "{base}/pypi/simple/"',
        'authenticate = "always"',
        "export UV_INDEX_PKGATE_USERNAME=token",
        f"export UV_INDEX_PKGATE_PASSWORD={secret}",
        f"poetry source add --priority=primary pkgate {base}/pypi/simple/",
        f"poetry config http-basic.pkgate token {secret}",
    ):
        assert expected in text, expected
    for client in ("npm", "yarn", "pnpm", "bun", "pip", "uv", "poetry"):
        assert f"\n{client} (" in text


async def test_register__japanese_mail(server: RunningServer, mail: SmtpServer) -> None:
    answer = await register(server, language="ja")
    assert answer.status == 202
    assert mail.inbox.only()["Subject"] == "pkgate トークンのお知らせ"
    text = mail.inbox.text()
    assert "パッケージマネージャーの設定" in text
    (secret,) = set(tokens_in(text))
    assert await whoami(server, secret) == 200


async def test_register__only_enabled_ecosystems_in_setup(
    start_server: StartServer, mail: SmtpServer
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
    await register(server)
    text = mail.inbox.text()
    assert "npmAuthToken" in text
    assert "pypi" not in text
    assert "poetry" not in text


async def test_register__again_mails_reset_code_with_identical_answer(
    server: RunningServer, mail: SmtpServer
) -> None:
    first = await register(server)
    secret = tokens_in(mail.inbox.text())[0]
    second = await register(server)
    assert (first.status, first.raw) == (second.status, second.raw)
    assert len(mail.inbox.messages) == 2
    assert mail.inbox.messages[1]["Subject"] == "Your pkgate reset code"
    text = mail.inbox.text()
    assert tokens_in(text) == []
    code = code_in(text)
    assert f'curl --json \'{{"email": "dev@example.com", "code": "{code}"}}\'' in text
    assert f"{server.url}/api/v1/tokens/reset" in text
    assert "grep _authToken ~/.npmrc" in text
    assert "poetry config http-basic.pkgate" in text
    assert 'npmAuthToken: "<YOUR_TOKEN>"' in text
    assert await whoami(server, secret) == 200


async def test_register__without_smtp_url_writes_outbox(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM)
    with caplog.at_level(logging.INFO, logger="tokenapi.mail"):
        answer = await register(server)
    assert answer.status == 202
    files = list(server.settings.outbox_dir.glob("*.eml"))
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o077 == 0
    assert str(files[0]) in caplog.text
    (secret,) = set(tokens_in(files[0].read_text()))
    assert secret not in caplog.text
    assert await whoami(server, secret) == 200


async def test_register__smtp_refusing_gives_503_and_changes_nothing(
    server: RunningServer, mail: SmtpServer
) -> None:
    mail.inbox.refuse = True
    before = snapshot(server.settings.db_path)
    answer = await register(server)
    assert answer.status == 503
    assert "error" in answer.body
    assert snapshot(server.settings.db_path) == before
    assert before["users"] == []


async def test_register__smtp_refusing_reset_mail_changes_nothing(
    server: RunningServer, mail: SmtpServer
) -> None:
    secret = await registered(server, mail)
    mail.inbox.refuse = True
    before = snapshot(server.settings.db_path)
    answer = await register(server)
    assert answer.status == 503
    assert snapshot(server.settings.db_path) == before
    assert before["reset_codes"] == []
    assert await whoami(server, secret) == 200


async def test_register__smtp_down_gives_503_and_changes_nothing(
    start_server: StartServer,
) -> None:
    server = await start_server(
        npm_upstream=NPM_UPSTREAM, smtp_url=f"smtp://127.0.0.1:{free_port()}"
    )
    answer = await register(server)
    assert answer.status == 503
    assert answer.body == {"error": "The email could not be sent; try again later"}
    assert snapshot(server.settings.db_path)["users"] == []


async def test_reset__code_gives_new_token_and_kills_old(
    server: RunningServer, mail: SmtpServer
) -> None:
    old = await registered(server, mail)
    await register(server)
    code = code_in(mail.inbox.text())
    answer = await call(
        server, "POST", "/api/v1/tokens/reset", json={"email": "DEV@example.com", "code": code}
    )
    assert answer.status == 200
    new = answer.body["token"]
    assert tokens_in(new) == [new]
    assert answer.body["kind"] == "email"
    assert await whoami(server, old) == 401
    assert (await call(server, "GET", "/api/v1/tokens/status", token=old)).status == 401
    assert await whoami(server, new) == 200


async def test_reset__code_works_once(server: RunningServer, mail: SmtpServer) -> None:
    await registered(server, mail)
    await register(server)
    body = {"email": "dev@example.com", "code": code_in(mail.inbox.text())}
    assert (await call(server, "POST", "/api/v1/tokens/reset", json=body)).status == 200
    again = await call(server, "POST", "/api/v1/tokens/reset", json=body)
    assert (again.status, again.body) == (400, {"error": "Invalid or expired code"})


async def test_reset__five_wrong_tries_kill_the_code(
    server: RunningServer, mail: SmtpServer
) -> None:
    old = await registered(server, mail)
    await register(server)
    code = code_in(mail.inbox.text())
    wrong = "AAAAAAAA" if code != "AAAAAAAA" else "BBBBBBBB"
    for _ in range(5):
        answer = await call(
            server, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": wrong}
        )
        assert (answer.status, answer.body) == (400, {"error": "Invalid or expired code"})
    right = await call(
        server, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": code}
    )
    assert (right.status, right.body) == (400, {"error": "Invalid or expired code"})
    assert await whoami(server, old) == 200


async def test_reset__four_wrong_tries_leave_the_code_usable(
    server: RunningServer, mail: SmtpServer
) -> None:
    await registered(server, mail)
    await register(server)
    code = code_in(mail.inbox.text())
    wrong = "AAAAAAAA" if code != "AAAAAAAA" else "BBBBBBBB"
    for _ in range(4):
        await call(
            server, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": wrong}
        )
    right = await call(
        server, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": code}
    )
    assert right.status == 200


async def test_reset__code_expires_after_an_hour(server: RunningServer, mail: SmtpServer) -> None:
    await registered(server, mail)
    await register(server)
    code = code_in(mail.inbox.text())
    rows = snapshot(server.settings.db_path)["reset_codes"]
    (row,) = rows
    created_at, expires_at = row[3], row[4]
    assert expires_at - created_at == 3600
    # An hour passes.
    execute(
        server.settings.db_path,
        "UPDATE reset_codes SET created_at = ?, expires_at = ?",
        (time.time() - 3601, time.time() - 1),
    )
    answer = await call(
        server, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": code}
    )
    assert (answer.status, answer.body) == (400, {"error": "Invalid or expired code"})


async def test_reset__wrong_address_same_answer(server: RunningServer, mail: SmtpServer) -> None:
    await registered(server, mail)
    await register(server)
    code = code_in(mail.inbox.text())
    for email in ("other@example.com", "not an address"):
        answer = await call(
            server, "POST", "/api/v1/tokens/reset", json={"email": email, "code": code}
        )
        assert (answer.status, answer.body) == (400, {"error": "Invalid or expired code"})


async def test_regenerate__new_token_and_old_dead_everywhere(
    server: RunningServer, mail: SmtpServer
) -> None:
    old = await registered(server, mail)
    answer = await call(server, "POST", "/api/v1/tokens/regenerate", token=old)
    assert answer.status == 200
    new = answer.body["token"]
    assert new != old
    assert answer.body["name"] == "email"
    assert await whoami(server, old) == 401
    again = await call(server, "POST", "/api/v1/tokens/regenerate", token=old)
    assert again.status == 401
    assert again.headers["WWW-Authenticate"] == 'Bearer realm="pkgate"'
    assert await whoami(server, new) == 200


async def test_status__shows_uses_before_any_flush(
    start_server: StartServer, mail: SmtpServer
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url, last_used_flush=3600)
    secret = await registered(server, mail)
    before = time.time()
    for _ in range(3):
        assert await whoami(server, secret) == 200
    answer = await call(server, "GET", "/api/v1/tokens/status", token=secret)
    assert answer.status == 200
    assert server.recorder.flushes == 0
    body = answer.body
    assert body["name"] == "email"
    assert body["prefix"] == secret[:8]
    assert body["usage"]["npm"]["requests"] == 3
    assert body["usage"]["api"]["requests"] == 1
    assert body["last_used_at"].endswith("Z")
    from datetime import datetime

    seen = datetime.fromisoformat(body["usage"]["npm"]["last_used_at"]).timestamp()
    assert seen >= before - 0.001
    assert set(body) == {"id", "name", "kind", "prefix", "created_at", "last_used_at", "usage"} | {
        "expires_at",
        "scopes",
    }


async def test_status__unknown_token_401(server: RunningServer) -> None:
    answer = await call(server, "GET", "/api/v1/tokens/status", token="pkg_" + "A" * 36)
    assert answer.status == 401
    assert "error" in answer.body


async def test_revoke__token_dead_everywhere(server: RunningServer, mail: SmtpServer) -> None:
    secret = await registered(server, mail)
    answer = await call(server, "DELETE", "/api/v1/tokens", token=secret)
    assert (answer.status, answer.body) == (200, {"message": "Token revoked"})
    assert await whoami(server, secret) == 401
    assert (await call(server, "GET", "/api/v1/tokens/status", token=secret)).status == 401
    assert (await call(server, "DELETE", "/api/v1/tokens", token=secret)).status == 401


async def test_register__after_revoke_mails_new_token(
    server: RunningServer, mail: SmtpServer
) -> None:
    secret = await registered(server, mail)
    await call(server, "DELETE", "/api/v1/tokens", token=secret)
    answer = await register(server)
    assert answer.status == 202
    (new,) = set(tokens_in(mail.inbox.text()))
    assert new != secret
    assert await whoami(server, new) == 200


async def test_register__rate_limited_per_address(
    start_server: StartServer, mail: SmtpServer
) -> None:
    server = await start_server(
        npm_upstream=NPM_UPSTREAM, smtp_url=mail.url, register_limit_email=2
    )
    assert (await register(server)).status == 202
    assert (await register(server)).status == 202
    answer = await register(server, "DEV@example.com")
    assert answer.status == 429
    assert int(answer.headers["Retry-After"]) > 0
    assert "error" in answer.body
    assert len(mail.inbox.messages) == 2
    assert (await register(server, "other@example.com")).status == 202


async def test_register__rate_limited_per_client_ip(
    start_server: StartServer, mail: SmtpServer
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url, register_limit_ip=2)
    assert (await register(server, "a@example.com")).status == 202
    assert (await register(server, "b@example.com")).status == 202
    answer = await register(server, "c@example.com")
    assert answer.status == 429
    assert answer.headers["Retry-After"].isdigit()
    assert snapshot(server.settings.db_path)["users"].__len__() == 2
