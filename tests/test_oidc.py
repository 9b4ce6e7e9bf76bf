"""CI tokens from OIDC ID tokens (SPEC 18), against a local issuer on loopback with its own RSA
and EC keys: the exchange, every refusal, key rotation, expiry on time and early revocation."""

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from proxy.settings import SettingsError, load
from tests.api_support import Answer, call
from tests.clock import FakeClock
from tests.conftest import RunningServer, StartServer, free_port
from tests.oidc_issuer import Issuer, rsa_key, serve_issuer
from tokenapi.oidc import MIN_REFRESH, oidc_key, token_name
from tokenapi.oidcconfig import parse_issuers
from tokenapi.validation import EXPIRED

UNREACHABLE = "http://127.0.0.1:9/"
OWNER = "ci-owner@example.com"
NAME = "oidc:my-org/app@refs/heads/main run 123"


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    async with serve_issuer() as found:
        yield found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def issuers(issuer: Issuer, **extra: Any) -> Any:
    entry = {
        "issuer": issuer.issuer,
        "owner": OWNER,
        "claims": {"repository_owner": "my-org", "repository": "my-org/*"},
        "lifetime": 600,
        **extra,
    }
    return parse_issuers([entry])


@pytest.fixture
async def server(start_server: StartServer, issuer: Issuer, clock: FakeClock) -> RunningServer:
    return await start_server(
        npm_upstream=UNREACHABLE,
        pypi_upstream=UNREACHABLE + "simple/",
        oidc_issuers=issuers(issuer),
        clock=clock,
    )


def aud(server: RunningServer) -> str:
    return str(server.url)


async def exchange(server: RunningServer, id_token: str, **kw: Any) -> Answer:
    return await call(server, "POST", "/api/v1/oidc/token", json={"id_token": id_token}, **kw)


async def whoami(server: RunningServer, secret: str) -> Answer:
    return await call(server, "GET", "/npm/-/whoami", token=secret)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


async def test_exchange__mints_a_token_of_the_owner(
    server: RunningServer, issuer: Issuer, clock: FakeClock
) -> None:
    answer = await exchange(server, issuer.sign(issuer.claims(aud(server))))
    assert answer.status == 201, answer.body
    assert set(answer.body) == {"token", "id", "name", "expires_at", "scopes"}
    assert answer.body["name"] == NAME
    assert answer.body["scopes"] == ["npm", "pypi"]
    expires = datetime.fromisoformat(answer.body["expires_at"]).timestamp()
    assert expires == pytest.approx(clock.now + 600, abs=0.01)
    secret = answer.body["token"]
    assert (await whoami(server, secret)).body == {"username": OWNER}
    (token,) = await server.store.list_tokens(email=OWNER)
    assert (token.id, token.name, token.kind) == (answer.body["id"], NAME, "api")
    assert server.recorder.last_used_at(token.id, None) is not None  # last use tracked
    assert answer.headers["Cache-Control"] == "no-store"


async def test_exchange__ec_key_and_key_without_kid(server: RunningServer, issuer: Issuer) -> None:
    assert (await exchange(server, issuer.sign(issuer.claims(aud(server)), "ec-1"))).status == 201
    key = issuer.key("rsa-1")
    import jwt

    no_kid = jwt.encode(issuer.claims(aud(server)), key.private, algorithm="RS256")
    assert (await exchange(server, no_kid)).status == 201


def hs256_with_public_key(issuer: Issuer, claims: dict[str, Any]) -> str:
    pem = (
        issuer.key("rsa-1")
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims)
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered(issuer: Issuer, claims: dict[str, Any]) -> str:
    header, _, signature = issuer.sign(claims).split(".")
    changed = {**claims, "repository": "my-org/other", "run_id": "666"}
    return f"{header}.{b64(json.dumps(changed).encode())}.{signature}"


REFUSALS: dict[str, Any] = {
    "wrong audience": (
        lambda i, a: i.sign(i.claims("https://elsewhere.example")),
        "audience",
    ),
    "expired": (lambda i, a: i.sign(i.claims(a, exp=int(i.claims(a)["iat"]) - 120)), "expired"),
    "not yet valid": (
        lambda i, a: i.sign(i.claims(a, nbf=int(i.claims(a)["iat"]) + 600)),
        "not valid yet",
    ),
    "issued in the future": (
        lambda i, a: i.sign(i.claims(a, iat=int(i.claims(a)["iat"]) + 600)),
        "issued in the future",
    ),
    "no exp": (lambda i, a: i.sign(i.claims(a, exp=None)), "no exp"),
    "claim mismatch": (
        lambda i, a: i.sign(i.claims(a, repository_owner="evil-org", repository="evil-org/app")),
        "claim repository_owner does not match",
    ),
    "claim glob mismatch": (
        lambda i, a: i.sign(i.claims(a, repository="other-org/app")),
        "claim repository does not match",
    ),
    "claim missing": (
        lambda i, a: i.sign(i.claims(a, repository=None)),
        "claim repository does not match",
    ),
    "unknown issuer": (
        lambda i, a: i.sign(i.claims(a, iss="https://issuer.invalid")),
        "issuer is not trusted",
    ),
    "unknown kid": (
        lambda i, a: i.sign(i.claims(a), headers={"kid": "never-published"}),
        "signing key is unknown",
    ),
    "alg none": (
        lambda i, a: unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, i.claims(a)) + ".",
        "algorithm is not allowed",
    ),
    "HS256 with the public key as secret": (
        lambda i, a: hs256_with_public_key(i, i.claims(a)),
        "algorithm is not allowed",
    ),
    "tampered payload": (lambda i, a: tampered(i, i.claims(a)), "signature does not verify"),
    "signed by another key with a known kid": (
        lambda i, a: _foreign_signed(i.claims(a)),
        "signature does not verify",
    ),
    "oversized": (lambda i, a: i.sign(i.claims(a, pad="x" * 20_000)), "larger than"),
    "not a JWT": (lambda i, a: "not.a.jwt", "not a well-formed JWT"),
}


def _foreign_signed(claims: dict[str, Any]) -> str:
    import jwt

    other = rsa_key("rsa-1")  # same kid as the issuer's real key, different key
    return jwt.encode(claims, other.private, algorithm="RS256", headers={"kid": "rsa-1"})


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_exchange__refused_naming_the_check(
    server: RunningServer, issuer: Issuer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    make, message = REFUSALS[case]
    id_token = make(issuer, aud(server))
    answer = await exchange(server, id_token)
    assert answer.status == 401, (case, answer.body)
    assert message in answer.body["error"], answer.body
    assert id_token not in answer.raw.decode()
    for part in id_token.split("."):
        if len(part) > 16:
            assert part not in answer.raw.decode()
    assert await server.store.list_tokens(email=OWNER) == []
    assert message in caplog.text  # the refusal is logged, the JWT never
    assert all(part not in caplog.text for part in id_token.split(".") if len(part) > 16)


async def test_exchange__bad_bodies(server: RunningServer) -> None:
    for body in ({}, {"id_token": ""}, {"id_token": 5}):
        answer = await call(server, "POST", "/api/v1/oidc/token", json=body)
        assert (answer.status, answer.body) == (400, {"error": "id_token is required"})
    answer = await call(server, "POST", "/api/v1/oidc/token", json={"id_token": "x", "more": 1})
    assert answer.status == 400


async def test_key_rotation__picked_up_with_one_refresh(
    server: RunningServer, issuer: Issuer, clock: FakeClock
) -> None:
    assert (await exchange(server, issuer.sign(issuer.claims(aud(server))))).status == 201
    assert issuer.jwks_fetches == 1
    new = issuer.rotate()
    clock.advance(MIN_REFRESH)
    rotated = await exchange(server, issuer.sign(issuer.claims(aud(server)), new.kid))
    assert rotated.status == 201, rotated.body
    assert issuer.jwks_fetches == 2
    # Cached again: the next exchange fetches nothing.
    assert (await exchange(server, issuer.sign(issuer.claims(aud(server)), new.kid))).status == 201
    assert issuer.jwks_fetches == 2


async def test_unknown_kid__refreshes_once_then_not_again_at_once(
    server: RunningServer, issuer: Issuer, clock: FakeClock
) -> None:
    assert (await exchange(server, issuer.sign(issuer.claims(aud(server))))).status == 201
    clock.advance(MIN_REFRESH)
    stray = issuer.sign(issuer.claims(aud(server)), headers={"kid": "stray"})
    assert (await exchange(server, stray)).status == 401
    assert issuer.jwks_fetches == 2
    for _ in range(3):
        assert (await exchange(server, stray)).status == 401
    assert issuer.jwks_fetches == 2


async def test_minted_token__expires_on_time_and_can_be_revoked_early(
    server: RunningServer, issuer: Issuer, clock: FakeClock
) -> None:
    first = (await exchange(server, issuer.sign(issuer.claims(aud(server))))).body
    second = (await exchange(server, issuer.sign(issuer.claims(aud(server))))).body
    assert (await whoami(server, first["token"])).status == 200
    clock.advance(599)
    assert (await whoami(server, first["token"])).status == 200
    # Revoked early through the API like any token of the owner.
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    revoked = await call(server, "DELETE", f"/api/admin/tokens/{second['id']}", token=admin)
    assert revoked.status == 200
    gone = await whoami(server, second["token"])
    assert gone.status == 401
    clock.advance(1)
    expired = await whoami(server, first["token"])
    assert (expired.status, expired.body) == (401, {"error": EXPIRED})


async def test_exchange__scopes_and_max_lifetime(
    start_server: StartServer, issuer: Issuer, clock: FakeClock
) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        pypi_upstream=UNREACHABLE + "simple/",
        oidc_issuers=issuers(issuer, scopes=["pypi"], lifetime=3600),
        token_max_lifetime=900,
        clock=clock,
    )
    answer = await exchange(server, issuer.sign(issuer.claims(aud(server))))
    assert answer.body["scopes"] == ["pypi"]
    expires = datetime.fromisoformat(answer.body["expires_at"]).timestamp()
    assert expires == pytest.approx(clock.now + 900, abs=0.01)
    refused = await whoami(server, answer.body["token"])
    assert (refused.status, refused.body) == (401, {"error": "token not valid for npm"})


async def test_exchange__explicit_audience_and_several_entries_per_issuer(
    start_server: StartServer, issuer: Issuer
) -> None:
    entries = [
        {"issuer": issuer.issuer, "owner": "a@example.com", "claims": {"repository_owner": "a"}},
        {
            "issuer": issuer.issuer,
            "owner": "b@example.com",
            "audience": "pkgate-ci",
            "claims": {"repository_owner": "b"},
        },
    ]
    server = await start_server(npm_upstream=UNREACHABLE, oidc_issuers=parse_issuers(entries))
    b = await exchange(server, issuer.sign(issuer.claims("pkgate-ci", repository_owner="b")))
    assert b.status == 201, b.body
    assert (await whoami(server, b.body["token"])).body == {"username": "b@example.com"}
    # Entry a wants the public URL as audience; entry b the owner b.
    wrong = await exchange(server, issuer.sign(issuer.claims("pkgate-ci", repository_owner="a")))
    assert wrong.status == 401


async def test_exchange__rate_limited_per_ip(start_server: StartServer, issuer: Issuer) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE, oidc_issuers=issuers(issuer), oidc_limit_ip=2
    )
    for _ in range(2):
        assert (await exchange(server, "not.a.jwt")).status == 401
    limited = await exchange(server, issuer.sign(issuer.claims(aud(server))))
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1


async def test_exchange__unreachable_issuer_is_503(start_server: StartServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = await start_server(
        npm_upstream=UNREACHABLE, oidc_issuers=parse_issuers([{"issuer": dead, "owner": OWNER}])
    )
    from tests.oidc_issuer import Issuer as Fake

    fake = Fake()
    fake.url = type(fake.url)(dead)
    answer = await exchange(server, fake.sign(fake.claims(aud(server))))
    assert answer.status == 503
    assert answer.headers["Retry-After"]


async def test_exchange__hostile_issuer_documents_are_bounded(
    start_server: StartServer, issuer: Issuer
) -> None:
    from aiohttp import web

    from tests.conftest import serve_app

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b" " * 65536)
        return resp

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", huge)
    runner, url = await serve_app(app)
    try:
        server = await start_server(
            npm_upstream=UNREACHABLE,
            oidc_issuers=parse_issuers([{"issuer": str(url), "owner": OWNER}]),
        )
        fake = Issuer()
        fake.url = url
        answer = await exchange(server, fake.sign(fake.claims(aud(server))))
        assert answer.status == 503
        assert server.app[oidc_key].keys.fetches == 1
    finally:
        await runner.cleanup()


def test_token_name__github_gitlab_and_fallback() -> None:
    gh = {"repository": "o/r", "ref": "refs/heads/main", "run_id": "9"}
    assert token_name(gh) == "oidc:o/r@refs/heads/main run 9"
    gl = {"project_path": "g/p", "ref": "main", "pipeline_id": 77}
    assert token_name(gl) == "oidc:g/p@main run 77"
    assert token_name({"sub": "x\r\ny"}) == "oidc:xy"
    assert len(token_name({"repository": "r" * 500, "ref": "f" * 500})) <= 100


BASE = '[[oidc_issuers]]\nissuer = "https://ci.example.com"\nowner = "a@b.cd"\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[oidc_issuers]]\nissuer = "http://ci.example.com"\nowner = "a@b.cd"\n', "https"),
        ('[[oidc_issuers]]\nowner = "a@b.cd"\n', "issuer is required"),
        ('[[oidc_issuers]]\nissuer = "https://ci.example.com"\n', "owner"),
        (
            BASE + "lifetime = 90000\n",
            "at most 86400",
        ),
        (
            BASE + 'scopes = ["maven"]\n',
            "scopes",
        ),
        (
            BASE + 'claims = "x"\n',
            "claims",
        ),
        (
            BASE + "extra = 1\n",
            "unknown key 'extra'",
        ),
        ('oidc_issuers = "nope"\n', "JSON"),
    ],
)
def test_settings__bad_issuers_stop_start_up_with_one_line(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "pkgate.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as err:
        load({}, env={}, config_file=path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("oidc_issuers")
    assert message in text


def test_settings__issuers_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "pkgate.toml"
    path.write_text(
        "[[oidc_issuers]]\n"
        'issuer = "https://ci.example.com/"\n'
        'owner = "CI@Example.com"\n'
        'scopes = ["npm"]\n'
        "lifetime = 900\n"
        'claims = { repository_owner = "my-org", repository = "my-org/*" }\n'
        "[[oidc_issuers]]\n"
        'issuer = "http://[::1]:8443"\n'
        'owner = "ci@example.com"\n'
        'audience = "pkgate"\n'
    )
    first, second = load({}, env={}, config_file=path).oidc_issuers
    assert (first.issuer, first.owner, first.scopes, first.lifetime, first.audience) == (
        "https://ci.example.com",
        "ci@example.com",
        ("npm",),
        900.0,
        None,
    )
    assert [(r.name, r.pattern) for r in first.claims] == [
        ("repository_owner", "my-org"),
        ("repository", "my-org/*"),
    ]
    assert first.claims[1].matches("my-org/app")
    assert not first.claims[1].matches("my-org-evil/app")
    assert not first.claims[0].matches("my-org2")
    assert (second.issuer, second.lifetime, second.scopes) == (
        "http://[::1]:8443",
        1800.0,
        ("npm", "pypi"),
    )


def test_readme__issuer_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## CI tokens", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "pkgate.toml"
    path.write_text(example)
    github, gitlab = load({}, env={}, config_file=path).oidc_issuers
    assert github.owner == gitlab.owner == "ci@example.com"
    assert [r.name for r in github.claims] == ["repository_owner", "ref"]


def test_settings__issuers_from_the_environment_as_json() -> None:
    env = {
        "PKGATE_OIDC_ISSUERS": json.dumps([{"issuer": "https://ci.example.com", "owner": "a@b.cd"}])
    }
    (entry,) = load({}, env=env).oidc_issuers
    assert (entry.issuer, entry.owner) == ("https://ci.example.com", "a@b.cd")
    with pytest.raises(SettingsError, match="PKGATE_OIDC_ISSUERS"):
        load({}, env={"PKGATE_OIDC_ISSUERS": "[{"})


async def test_exchange__hanging_issuer_is_cut_off_and_not_retried_at_once(
    start_server: StartServer,
) -> None:
    import asyncio

    import aiohttp
    from aiohttp import web

    from tests.conftest import serve_app

    release = asyncio.Event()
    calls = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", hang)
    runner, url = await serve_app(app)
    try:
        server = await start_server(
            npm_upstream=UNREACHABLE,
            oidc_issuers=parse_issuers([{"issuer": str(url), "owner": OWNER}]),
        )
        server.app[oidc_key].keys.timeout = aiohttp.ClientTimeout(total=0.5)
        fake = Issuer()
        fake.url = url
        id_token = fake.sign(fake.claims(aud(server)))
        assert (await exchange(server, id_token)).status == 503
        # Within the refresh interval a second request does not wait for the issuer again.
        assert (await exchange(server, id_token)).status == 503
        assert calls == 1
    finally:
        release.set()
        await runner.cleanup()


async def test_exchange__on_both_store_backends(
    start_server: StartServer, issuer: Issuer, clock: FakeClock, database_url: str
) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        oidc_issuers=issuers(issuer, scopes=["npm"]),
        database_url=database_url,
        clock=clock,
    )
    answer = await exchange(server, issuer.sign(issuer.claims(aud(server))))
    assert answer.status == 201, answer.body
    assert (await whoami(server, answer.body["token"])).body == {"username": OWNER}
    (token,) = await server.store.list_tokens(email=OWNER, now=clock.now)
    assert (token.name, token.scopes) == (NAME, ("npm",))
    clock.advance(600)
    assert (await whoami(server, answer.body["token"])).body == {"error": EXPIRED}
    assert await server.store.list_tokens(email=OWNER, now=clock.now) == []
