"""Secrets stay where they belong: no error echoes a presented secret, and no email other than
the one delivering a secret contains it."""

from base64 import b64encode
from email import message_from_bytes, policy

import pytest

from tests.api_support import NPM_UPSTREAM, PYPI_UPSTREAM, call, code_in, tokens_in
from tests.conftest import RunningServer, StartServer


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    # No SMTP server: mail goes to the outbox, where the test reads every message written.
    return await start_server(npm_upstream=NPM_UPSTREAM, pypi_upstream=PYPI_UPSTREAM)


def b64(text: str) -> str:
    return b64encode(text.encode()).decode()


def wrappings(secret: str) -> list[str]:
    """Authorization values that carry ``secret`` but are malformed, wrong or unknown."""
    return [
        f"Token {secret}",
        f"Bearer {secret} trailing",
        f"Bearer  {secret[:-1]}{'Y' if secret.endswith('Z') else 'Z'}",  # one character off
        f"Bearer {secret}{secret}",
        f"Basic {secret}",
        f"Basic {b64(secret)}",
        f"Basic {b64('user:' + secret + 'x')}",
        f"Basic {b64(secret + 'x:')}",
        f"bearer {b64('user:' + secret[:-2])}",
        f"Digest username={secret}",
        f"Bearer {secret[::-1]}",
    ]


ROUTES = [
    ("GET", "/npm/-/whoami"),
    ("GET", "/npm/some-package"),
    ("GET", "/pypi/simple/"),
    ("GET", "/api/v1/tokens/status"),
    ("POST", "/api/v1/tokens/regenerate"),
    ("DELETE", "/api/v1/tokens"),
    ("GET", "/api/tokens"),
    ("GET", "/api/session"),
    ("GET", "/api/admin/tokens"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_secrets__errors_never_echo_a_presented_secret(
    server: RunningServer, method: str, path: str
) -> None:
    secret = await server.token()
    revoked = await server.token("gone@example.com")
    (gone,) = await server.store.list_tokens(email="gone@example.com")
    await server.store.revoke_token(gone.id)
    values = [*wrappings(secret), *wrappings(revoked), f"Bearer {revoked}"]
    for value in values:
        answer = await call(server, method, path, headers={"Authorization": value})
        assert answer.status == 401, (value, answer.raw)
        assert answer.body["error"]
        everything = answer.raw.decode(errors="replace") + str(dict(answer.headers))
        for s in (secret, revoked, secret[4:], revoked[4:], b64(secret), secret[::-1]):
            assert s not in everything, (value, everything)


async def test_secrets__unknown_json_field_holding_a_secret_is_not_echoed_whole(
    server: RunningServer,
) -> None:
    secret = await server.token()
    answer = await call(server, "POST", "/api/tokens", token=secret, json={secret: "x"})
    assert answer.status == 400
    assert secret not in answer.raw.decode()


def outbox(server: RunningServer) -> list[tuple[str, str]]:
    """(recipient, full text incl. headers and every part) of every message written so far."""
    found = []
    for path in sorted(server.settings.outbox_dir.glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        parts = [p.get_content() for p in message.walk() if p.get_content_maintype() == "text"]
        found.append((str(message["To"]), str(message) + "\n".join(parts)))
    return found


async def test_secrets__each_secret_only_in_the_mail_that_delivers_it(
    server: RunningServer,
) -> None:
    email = "dev@example.com"
    assert (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202
    (welcome,) = outbox(server)
    (first,) = set(tokens_in(welcome[1]))

    # Asking again mails a reset code, which must not repeat the active token.
    assert (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202
    mails = outbox(server)
    assert len(mails) == 2
    reset_mail = next(text for _, text in mails if text != welcome[1])
    assert first not in reset_mail
    assert tokens_in(reset_mail) == []
    code = code_in(reset_mail.replace("\r\n", "\n"))

    # Secrets answered by the API are never mailed.
    reset = await call(server, "POST", "/api/v1/tokens/reset", json={"email": email, "code": code})
    assert reset.status == 200
    second = reset.body["token"]
    regenerated = await call(server, "POST", "/api/v1/tokens/regenerate", token=second)
    third = regenerated.body["token"]
    named = await call(server, "POST", "/api/tokens", token=third, json={"name": "ci"})
    assert named.status == 201
    fourth = named.body["token"]
    # Another user's registration mail carries only that user's token.
    assert (
        await call(server, "POST", "/api/v1/tokens", json={"email": "o@example.com"})
    ).status == 202

    mails = outbox(server)
    assert len(mails) == 3
    for _, text in mails:
        for secret in (second, third, fourth):
            assert secret not in text
    other = [text for to, text in mails if to == "o@example.com"]
    assert len(other) == 1
    assert first not in other[0]
    (other_secret,) = set(tokens_in(other[0]))
    assert other_secret not in welcome[1] + reset_mail


async def test_secrets__reset_code_only_in_its_mail(server: RunningServer) -> None:
    email = "dev@example.com"
    await call(server, "POST", "/api/v1/tokens", json={"email": email})
    await call(server, "POST", "/api/v1/tokens", json={"email": email})
    (reset_mail,) = [text for _, text in outbox(server) if not tokens_in(text)]
    code = code_in(reset_mail.replace("\r\n", "\n"))
    wrong = await call(
        server,
        "POST",
        "/api/v1/tokens/reset",
        json={"email": email, "code": code[:-1] + ("Y" if code.endswith("Z") else "Z")},
    )
    assert wrong.status == 400
    assert code not in wrong.raw.decode()
    again = await call(server, "POST", "/api/v1/tokens", json={"email": email})
    assert code not in again.raw.decode()


async def test_secrets__ordinary_unknown_field_is_still_named(server: RunningServer) -> None:
    secret = await server.token()
    answer = await call(server, "POST", "/api/tokens", token=secret, json={"admin": True})
    assert answer.status == 400
    assert answer.body == {"error": "Unknown field: 'admin'"}
