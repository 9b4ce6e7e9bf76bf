"""Load: 500 concurrent clients for 60 seconds against one pkgate process (uvloop, separate from
the load generator), mixing npm and PyPI installs' requests, token API calls and revocations.

Every answer must be one of the intended statuses (401 only for revoked or deliberately bad
tokens), nothing may fail at the connection level, every artifact received must be the published
bytes, and every request made with a token after its revocation was answered must get 401.  A
second, short run with registry rate limits on checks that the only refusal added is 429.

``PKGATE_LOAD_SECONDS`` shortens the main run for local experiments (CI uses the default).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import pkgate_cmd, run
from tests.procs import ServerProcess
from tests.upstreams.npm_registry import CORGI, NpmRegistry, serve_registry
from tests.upstreams.pypi_index import JSON_TYPE, PypiIndex, serve_index
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store
from tokenapi.tokens import digest

CLIENTS = 500
SECONDS = float(os.environ.get("PKGATE_LOAD_SECONDS", "60"))
MAX_REQUESTS_PER_CLIENT = 100_000  # a bound by count as well as by time
POOL = 400  # tokens the clients share; the revoker works through them
REVOKERS = 4  # tasks revoking pool tokens one after another
REVOKE_EVERY = 0.05  # seconds each revoker pauses between revocations
KEEP_ACTIVE = 40  # the revoker stops when this few are left
PASSWORD = "load-test-password"
EMAIL = "load@example.com"
INTENDED = {200, 201, 304, 401, 429}


@dataclass
class Tally:
    """What the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    after_revocation: list[str] = field(default_factory=list)
    wrong_bytes: int = 0
    revocations: int = 0
    named_created: int = 0
    named_deleted: int = 0

    @property
    def tried(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


@dataclass
class Tokens:
    """The shared pool: secrets in use, and when each revocation was sent and answered."""

    active: list[str]
    revoke_sent: dict[str, float] = field(default_factory=dict)
    revoke_done: dict[str, float] = field(default_factory=dict)

    def revoked(self) -> list[str]:
        return list(self.revoke_done)


@dataclass
class Target:
    """Paths and expected bytes of what the fake upstreams publish."""

    npm_packuments: list[str]
    npm_tarballs: list[tuple[str, bytes]]
    pypi_pages: list[str]
    pypi_files: list[tuple[str, bytes]]


def targets(index: PypiIndex, registry: NpmRegistry) -> Target:
    small = [p for p in registry.packages if len(p.tarball) < 1024 * 1024]
    names = sorted({p.name for p in small})
    files = [p for p in index.published if p.host in ("index", "files")]
    numbers = {"index": "0", "files": "1"}
    return Target(
        npm_packuments=["/npm/" + n.replace("/", "%2f") for n in names],
        npm_tarballs=[("/npm" + registry.tarball_path(p), p.tarball) for p in small],
        pypi_pages=sorted(
            {f"/pypi/simple/{p.dist.project.lower().replace('.', '-')}/" for p in files}
        ),
        pypi_files=[
            (f"/pypi/files/{numbers[p.host]}{index.file_path(p)}", p.dist.data) for p in files
        ],
    )


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(secret: str) -> dict[str, str]:
    value = base64.b64encode(f"token:{secret}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


async def prepare(data: Path, database_url: str | None = None) -> list[str]:
    """A user with a password (for sessions) and the token pool, before the server starts."""
    database = database_url or f"sqlite:///{data / 'pkgate.db'}"
    created = await run(
        *pkgate_cmd("user", "create", "--email", EMAIL, "--password-stdin"),
        "--data-dir",
        str(data),
        "--database-url",
        database,
        input=PASSWORD.encode() + b"\n",
    )
    assert created.returncode == 0, created.output
    store = await Store.open(database)
    try:
        secrets = []
        for i in range(POOL):
            user = await ensure_user(store, f"user{i % 50}@example.com")
            _, secret = await issue_token(store, user, name=f"pool{i}")
            secrets.append(secret)
    finally:
        await store.close()
    return secrets


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[PypiIndex, NpmRegistry]]:
    async with serve_index() as index, serve_registry() as registry:
        yield index, registry


def server_args(index: PypiIndex, registry: NpmRegistry, *limits: str) -> list[str]:
    return [
        "--npm-upstream",
        f"{registry.url}/",
        "--pypi-upstream",
        str(index.index_url),
        "--pypi-files-upstream",
        str(index.files_url) + "/",
        "--token-create-limit",
        "1000000",
        "--access-log",
        "false",
        "--log-level",
        "warning",
        *limits,
    ]


class Client:
    """One simulated client: a loop of weighted random requests until the deadline."""

    def __init__(
        self,
        n: int,
        url: URL,
        http: aiohttp.ClientSession,
        session_http: aiohttp.ClientSession,
        tokens: Tokens,
        target: Target,
        tally: Tally,
        deadline: float,
    ) -> None:
        self.rng = random.Random(n)
        self.url = url
        self.http = http
        self.session_http = session_http
        self.tokens = tokens
        self.target = target
        self.tally = tally
        self.deadline = deadline
        self.etags: dict[str, str] = {}

    async def request(
        self,
        kind: str,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        secret: str | None = None,
        expect_401: bool = False,
        expect: bytes | None = None,
        http: aiohttp.ClientSession | None = None,
        json: object = None,
    ) -> tuple[int, object]:
        started = time.monotonic()
        url = (
            self.url.with_path(path, encoded=True) if "?" not in path else URL(str(self.url) + path)
        )
        try:
            async with (http or self.http).request(method, url, headers=headers, json=json) as resp:
                body = await resp.read()
                status = resp.status
                payload: object = None
                if resp.content_type == "application/json" and body:
                    payload = await resp.json()
                if status == 200 and "ETag" in resp.headers and method == "GET":
                    self.etags[path] = resp.headers["ETag"]
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self.tally.errors[f"{kind}: {exc.__class__.__name__}"] += 1
            return 0, None
        tally = self.tally
        tally.statuses[status] += 1
        tally.by_kind[kind] += 1
        if status not in INTENDED:
            tally.unexpected.append(f"{kind} {path[:80]} -> {status}")
        if expect is not None and status == 200 and body != expect:
            tally.wrong_bytes += 1
        if secret is not None:
            done = self.tokens.revoke_done.get(secret)
            # 429 (rate limits on) refuses before authentication: also not served.
            if done is not None and started >= done and status not in (401, 429):
                tally.after_revocation.append(f"{kind} {path[:80]} -> {status}")
            if status == 401 and not expect_401 and secret not in self.tokens.revoke_sent:
                tally.unexpected.append(f"{kind} {path[:80]} -> 401 with a live token")
        elif status == 401 and not expect_401:
            tally.unexpected.append(f"{kind} {path[:80]} -> 401")
        return status, payload

    def secret(self) -> str:
        return self.rng.choice(self.tokens.active)

    async def one(self) -> None:
        r = self.rng.random()
        t = self.target
        if r < 0.22:
            path = self.rng.choice(t.npm_packuments)
            headers = bearer(secret := self.secret())
            if self.rng.random() < 0.5:
                headers["Accept"] = CORGI
            elif path in self.etags and self.rng.random() < 0.3:
                headers["If-None-Match"] = self.etags[path]
            await self.request("packument", "GET", path, headers, secret=secret)
        elif r < 0.37:
            path, data = self.rng.choice(t.npm_tarballs)
            secret = self.secret()
            await self.request("tarball", "GET", path, bearer(secret), secret=secret, expect=data)
        elif r < 0.55:
            path = self.rng.choice(t.pypi_pages)
            headers = basic(secret := self.secret())
            if self.rng.random() < 0.5:
                headers["Accept"] = JSON_TYPE
            await self.request("index page", "GET", path, headers, secret=secret)
        elif r < 0.67:
            path, data = self.rng.choice(t.pypi_files)
            secret = self.secret()
            await self.request("file", "GET", path, basic(secret), secret=secret, expect=data)
        elif r < 0.79:
            secret = self.secret()
            await self.request(
                "token status", "GET", "/api/v1/tokens/status", bearer(secret), secret=secret
            )
        elif r < 0.85:
            await self.named_token_round()
        elif r < 0.92:
            bad = "pkg_" + "".join(self.rng.choices("abcdefghijkmnopqrstuvwxyz0123456789", k=40))
            path = self.rng.choice(t.npm_packuments)
            await self.request("bad token", "GET", path, bearer(bad), expect_401=True)
        else:
            revoked = self.tokens.revoked()
            if revoked:
                secret = self.rng.choice(revoked)
                path = self.rng.choice(t.pypi_pages)
                await self.request(
                    "revoked token", "GET", path, basic(secret), secret=secret, expect_401=True
                )

    async def named_token_round(self) -> None:
        """Create a named token, use it, delete it, and check it is refused at once."""
        origin = {"Origin": str(self.url)}
        sh = self.session_http
        await self.request("named list", "GET", "/api/tokens", {}, http=sh)
        status, payload = await self.request(
            "named create", "POST", "/api/tokens", origin, http=sh, json={"name": "load"}
        )
        if status != 201 or not isinstance(payload, dict):
            return
        self.tally.named_created += 1
        secret, token_id = payload["token"], payload["id"]
        path = self.rng.choice(self.target.npm_packuments)
        await self.request("named use", "GET", path, bearer(secret), secret=secret)
        self.tokens.revoke_sent[secret] = time.monotonic()
        status, _ = await self.request(
            "named delete", "DELETE", f"/api/tokens/{token_id}", origin, http=sh
        )
        if status == 200:
            self.tokens.revoke_done[secret] = time.monotonic()
            self.tally.named_deleted += 1
            await self.request("named after delete", "GET", path, bearer(secret), secret=secret)

    async def run(self) -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= self.deadline:
                return
            await self.one()


async def revoker(
    url: URL, http: aiohttp.ClientSession, tokens: Tokens, tally: Tally, deadline: float
) -> None:
    """Revoke pool tokens one by one through the API, recording when each was answered."""
    while time.monotonic() < deadline and len(tokens.active) > KEEP_ACTIVE:
        secret = tokens.active.pop(random.randrange(len(tokens.active)))
        tokens.revoke_sent[secret] = time.monotonic()
        async with http.delete(url / "api" / "v1" / "tokens", headers=bearer(secret)) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        tokens.revoke_done[secret] = time.monotonic()
        tally.revocations += 1
        await asyncio.sleep(REVOKE_EVERY)  # pacing the revocations, not waiting for a state


async def drive(
    server: ServerProcess,
    target: Target,
    secrets: list[str],
    *,
    clients: int,
    seconds: float,
    revoke: bool,
) -> Tally:
    tally = Tally()
    tokens = Tokens(active=list(secrets))
    connector = aiohttp.TCPConnector(limit=clients + 10, limit_per_host=clients + 10)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=timeout) as sh,
    ):
        async with sh.post(
            server.url / "api" / "session",
            json={"email": EMAIL, "password": PASSWORD},
            headers={"Origin": str(server.url)},
        ) as resp:
            assert resp.status == 200, await resp.text()
        deadline = time.monotonic() + seconds
        work = [
            Client(n, server.url, http, sh, tokens, target, tally, deadline).run()
            for n in range(clients)
        ]
        if revoke:
            work += [revoker(server.url, http, tokens, tally, deadline) for _ in range(REVOKERS)]
        await asyncio.gather(*work)
    return tally


def report(name: str, tally: Tally, seconds: float) -> str:
    lines = [
        f"{name}: {tally.tried} requests in {seconds:.0f} s ({tally.tried / seconds:.0f}/s)",
        f"  statuses: {dict(sorted(tally.statuses.items()))}",
        f"  by kind: {dict(sorted(tally.by_kind.items()))}",
        f"  revocations via API: {tally.revocations}, named tokens created/deleted: "
        f"{tally.named_created}/{tally.named_deleted}",
        f"  connection errors: {dict(tally.errors)}, wrong artifact bytes: {tally.wrong_bytes}, "
        f"served after revocation: {len(tally.after_revocation)}, "
        f"unexpected: {len(tally.unexpected)}",
    ]
    return "\n".join(lines)


@pytest.mark.slow
async def test_load__500_clients_mixed_for_a_minute(
    tmp_path: Path, upstreams: tuple[PypiIndex, NpmRegistry], database_url: str
) -> None:
    index, registry = upstreams
    data = tmp_path / "data"
    secrets = await prepare(data, database_url)
    limits = ["--registry-rate-per-token", "0", "--registry-rate-per-ip", "0"]
    limits += ["--registry-auth-failures", "0", "--database-url", database_url]
    server = ServerProcess(data, server_args(index, registry, *limits))
    await server.start()
    started = time.monotonic()
    try:
        tally = await drive(
            server, targets(index, registry), secrets, clients=CLIENTS, seconds=SECONDS, revoke=True
        )
    finally:
        code = await server.stop()
    elapsed = time.monotonic() - started
    print("\n" + report("load", tally, elapsed))
    assert code == 0, server.stderr[-2000:]
    assert tally.unexpected == [], tally.unexpected[:20]
    assert tally.after_revocation == [], tally.after_revocation[:20]
    assert dict(tally.errors) == {}
    assert tally.wrong_bytes == 0
    assert not any(s >= 500 for s in tally.statuses)
    assert set(tally.statuses) <= INTENDED
    # The run did what it claims: every kind of request, revocations and their refusals.
    assert tally.revocations >= min(POOL - KEEP_ACTIVE, int(SECONDS / 3))
    assert tally.by_kind["revoked token"] > 0
    assert tally.by_kind["named after delete"] > 0
    for kind in ("packument", "tarball", "index page", "file", "token status", "bad token"):
        assert tally.by_kind[kind] > 0, kind
    assert b"Traceback" not in server.stderr


@pytest.mark.slow
async def test_load__rate_limits_add_only_429(
    tmp_path: Path, upstreams: tuple[PypiIndex, NpmRegistry]
) -> None:
    index, registry = upstreams
    data = tmp_path / "data"
    secrets = (await prepare(data))[:5]
    limits = ["--registry-rate-per-token", "20", "--registry-rate-burst", "40"]
    limits += ["--registry-auth-failures", "0"]
    server = ServerProcess(data, server_args(index, registry, *limits))
    await server.start()
    try:
        tally = await drive(
            server, targets(index, registry), secrets, clients=100, seconds=6, revoke=False
        )
    finally:
        code = await server.stop()
    print("\n" + report("rate limited", tally, 6))
    assert code == 0
    assert tally.statuses[429] > 0
    assert tally.unexpected == [], tally.unexpected[:20]
    assert dict(tally.errors) == {}
    assert tally.wrong_bytes == 0
    assert set(tally.statuses) <= INTENDED


async def test_load__store_reads_overlapping_without_pause_see_a_revocation(
    database_url: str,
) -> None:
    # What the load test found, at small scale: reads that always overlap on the store's reader
    # connection must still see a revocation (and a new token) once it is committed.
    store = await Store.open(database_url)
    try:
        user = await ensure_user(store, "r@example.com")
        token, secret = await issue_token(store, user, name="r")
        others = [digest((await issue_token(store, user, name=f"o{i}"))[1]) for i in range(20)]
        stop = asyncio.Event()

        async def reader(n: int) -> None:
            while not stop.is_set():
                await store.lookup_digest(others[n % len(others)])

        readers = [asyncio.create_task(reader(n)) for n in range(50)]
        try:
            for _ in range(20):  # let the reads get going and overlap
                await store.lookup_digest(digest(secret))
            await store.revoke_token(token.id)
            assert await store.lookup_digest(digest(secret)) is None
            _, fresh = await issue_token(store, user, name="fresh")
            assert await store.lookup_digest(digest(fresh)) is not None
        finally:
            stop.set()
            await asyncio.gather(*readers)
    finally:
        await store.close()
