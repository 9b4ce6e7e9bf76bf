"""Download history (SPEC 16): what is recorded, when it is written, how it is listed and pruned."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api_support import Answer, call
from tests.conftest import RunningServer, StartServer, pkgate_cmd, run
from tests.procs import ServerProcess
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi.downloads import DAY, npm_tarball_version, prune, pruning, pypi_file
from tokenapi.issue import ensure_user, issue_token
from tokenapi.passwords import hash_password_async
from tokenapi.store import Store


@pytest.fixture
async def server(start_server: StartServer, registry: NpmRegistry) -> RunningServer:
    # A flush interval longer than any test: only an explicit flush writes to the store.
    return await start_server(npm_upstream=str(registry.url) + "/", last_used_flush=3600)


async def fetch(server: RunningServer, path: str, secret: str, method: str = "GET") -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, server.url / path.lstrip("/"), headers={"Authorization": f"Bearer {secret}"}
        ) as resp,
    ):
        await resp.read()
        return resp.status


def listed(answer: Answer) -> list[tuple[str, str, str]]:
    assert answer.status == 200, answer.body
    return [(d["package"], d["version"], d["filename"]) for d in answer.body["downloads"]]


# --- what a file is --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("demo_app-1.0.0-py3-none-any.whl", ("demo-app", "1.0.0")),
        ("Demo.App-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", ("demo-app", "1.0")),
        ("zope.interface-6.0-1-cp39-cp39-win32.whl", ("zope-interface", "6.0")),
        ("demo-app-2.0.0rc1.tar.gz", ("demo-app", "2.0.0rc1")),
        ("Demo_App-2.0.0RC1.tar.gz", ("demo-app", "2.0.0rc1")),
        ("legacy-pkg-1.2.zip", ("legacy-pkg", "1.2")),
        ("old-thing-0.9.tar.bz2", ("old-thing", "0.9")),
        ("not-a-distribution.txt", None),
        ("noversion.tar.gz", None),
    ],
)
def test_pypi_file__names_and_versions_are_normalised(
    filename: str, expected: tuple[str, str] | None
) -> None:
    assert pypi_file(filename) == expected


def test_npm_tarball_version__from_the_route() -> None:
    assert npm_tarball_version("pkg-plain", "pkg-plain-1.1.0.tgz") == "1.1.0"
    assert npm_tarball_version("@acme/scoped", "scoped-2.0.0-beta.1.tgz") == "2.0.0-beta.1"
    assert npm_tarball_version("pkg-plain", "other-1.0.0.tgz") is None
    assert npm_tarball_version("pkg-plain", "pkg-plain-.tgz") is None


# --- recording over HTTP ---------------------------------------------------------------------


async def test_tarball_get__recorded_in_memory_then_written_by_the_flush(
    server: RunningServer, registry: NpmRegistry
) -> None:
    secret = await server.token("dev@example.com", name="laptop")
    plain = registry.package("pkg-plain", "1.1.0")
    scoped = registry.package("@acme/scoped", "2.0.0")
    # Metadata and HEAD requests are not downloads.
    assert await fetch(server, "/npm/pkg-plain", secret) == 200
    assert await fetch(server, "/npm" + registry.tarball_path(plain), secret, "HEAD") == 200
    assert await fetch(server, "/npm" + registry.tarball_path(plain), secret) == 200
    assert await fetch(server, "/npm" + registry.tarball_path(scoped), secret) == 200

    stored_before = await server.store.list_downloads(_everything())
    assert stored_before == []  # nothing written on the request path
    answer = await call(server, "GET", "/api/v1/tokens/downloads", token=secret)
    expected = [
        ("@acme/scoped", "2.0.0", scoped.file),
        ("pkg-plain", "1.1.0", plain.file),
    ]
    assert listed(answer) == expected  # memory merged over the store: visible at once
    row = answer.body["downloads"][0]
    assert row["token_name"] == "laptop"
    assert row["token_prefix"] == secret[:8]
    assert row["ecosystem"] == "npm"
    assert "email" not in row

    await server.recorder.flush()
    stored = await server.store.list_downloads(_everything())
    assert [(r.download.package, r.download.version) for r in stored] == [
        ("@acme/scoped", "2.0.0"),
        ("pkg-plain", "1.1.0"),
    ]
    again = await call(server, "GET", "/api/v1/tokens/downloads", token=secret)
    assert listed(again) == expected  # the same rows, not doubled


async def test_downloads__written_in_the_same_transaction_as_last_used(
    server: RunningServer, registry: NpmRegistry
) -> None:
    secret = await server.token()
    calls: list[tuple[int, int]] = []
    original = server.store.record_usage

    async def spy(updates: Any, downloads: Any = ()) -> int:
        updates, downloads = list(updates), list(downloads)
        calls.append((len(updates), len(downloads)))
        return await original(updates, downloads)

    server.store.record_usage = spy  # type: ignore[method-assign]
    for name, version in (("pkg-plain", "1.1.0"), ("pkg-deps", "1.0.0")):
        path = "/npm" + registry.tarball_path(registry.package(name, version))
        assert await fetch(server, path, secret) == 200
    await server.recorder.flush()
    assert calls == [(1, 2)]  # one token's last use and two downloads, one write


async def test_token_downloads__basic_auth_like_the_other_token_endpoints(
    server: RunningServer, registry: NpmRegistry
) -> None:
    secret = await server.token()
    path = "/npm" + registry.tarball_path(registry.package("pkg-plain", "1.1.0"))
    assert await fetch(server, path, secret) == 200
    basic = aiohttp.encode_basic_auth("token", secret)
    answer = await call(server, "GET", "/api/v1/tokens/downloads", headers={"Authorization": basic})
    assert [p for p, _, _ in listed(answer)] == ["pkg-plain"]
    missing = await call(server, "GET", "/api/v1/tokens/downloads")
    assert missing.status == 401


# --- listing -----------------------------------------------------------------------------------


def _everything() -> Any:
    from tokenapi.store import DownloadQuery

    return DownloadQuery(limit=1000)


async def _history(server: RunningServer, path: str, secret: str, **params: str) -> list[Any]:
    """Every row of a listing, page by page, asserting each page's size."""
    rows: list[Any] = []
    query = dict(params)
    while True:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        answer = await call(server, "GET", f"{path}?{qs}", token=secret)
        assert answer.status == 200, answer.body
        page = answer.body["downloads"]
        assert len(page) <= int(params.get("limit", "100"))
        rows.extend(page)
        cursor = answer.body["next_cursor"]
        if cursor is None:
            return rows
        assert len(page) == int(params["limit"])
        query["cursor"] = cursor


async def test_pagination__newest_first_every_row_once_across_store_and_memory(
    server: RunningServer,
) -> None:
    secret = await server.token()
    token = await server.validator.validate(secret)
    assert token is not None
    base = time.time() - 1000
    # 23 downloads, some at the very same time (ties are broken by id), the older half flushed.
    times = [base + i // 2 for i in range(23)]
    for i, at in enumerate(times[:12]):
        server.recorder.record_download(token.id, "npm", f"p{i}", "1.0.0", f"p{i}-1.0.0.tgz", at)
    await server.recorder.flush()
    for i, at in enumerate(times[12:], start=12):
        server.recorder.record_download(token.id, "npm", f"p{i}", "1.0.0", f"p{i}-1.0.0.tgz", at)

    rows = await _history(server, "/api/v1/tokens/downloads", secret, limit="5")
    assert len(rows) == 23
    assert len({r["id"] for r in rows}) == 23
    assert sorted(r["package"] for r in rows) == sorted(f"p{i}" for i in range(23))
    stamps = [r["downloaded_at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    # A page that ends exactly at the last row says there is no next page.
    exact = await call(server, "GET", "/api/v1/tokens/downloads?limit=23", token=secret)
    assert len(exact.body["downloads"]) == 23
    assert exact.body["next_cursor"] is None


async def test_user_downloads__all_of_the_callers_tokens_and_no_one_elses(
    server: RunningServer, registry: NpmRegistry
) -> None:
    laptop = await server.token("dev@example.com", name="laptop")
    ci = await server.token("dev@example.com", name="ci")
    other = await server.token("other@example.com", name="theirs")
    for secret, name, version in (
        (laptop, "pkg-plain", "1.1.0"),
        (ci, "pkg-deps", "1.0.0"),
        (other, "pkg-big", "1.0.0"),
    ):
        path = "/npm" + registry.tarball_path(registry.package(name, version))
        assert await fetch(server, path, secret) == 200
    await server.recorder.flush()
    answer = await call(server, "GET", "/api/downloads", token=laptop)
    assert sorted(p for p, _, _ in listed(answer)) == ["pkg-deps", "pkg-plain"]
    assert {d["token_name"] for d in answer.body["downloads"]} == {"laptop", "ci"}
    # The same through a login session cookie.
    user = await server.store.get_user_by_email("dev@example.com")
    assert user is not None
    await server.store.update_user(user.id, password_hash=await hash_password_async("pw-123456"))
    login = await call(
        server, "POST", "/api/session", json={"email": "dev@example.com", "password": "pw-123456"}
    )
    cookie = login.headers["Set-Cookie"].split(";")[0]
    by_cookie = await call(server, "GET", "/api/downloads", headers={"Cookie": cookie})
    assert sorted(p for p, _, _ in listed(by_cookie)) == ["pkg-deps", "pkg-plain"]


async def test_admin_downloads__filters_and_owner_email(server: RunningServer) -> None:
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    alice = await server.token("alice@example.com", name="a")
    bob = await server.token("bob@example.com", name="b")
    ids = {}
    for secret in (alice, bob):
        token = await server.validator.validate(secret)
        assert token is not None
        ids[secret] = token.id
    now = time.time()
    rec = server.recorder
    rec.record_download(ids[alice], "pypi", "demo-app", "1.0.0", "demo_app-1.0.0.tar.gz", now - 50)
    rec.record_download(ids[alice], "npm", "left-pad", "1.3.0", "left-pad-1.3.0.tgz", now - 40)
    await rec.flush()
    rec.record_download(ids[bob], "npm", "left-pad", "1.3.0", "left-pad-1.3.0.tgz", now - 30)
    rec.record_download(ids[bob], "npm", "left-pad", "1.2.0", "left-pad-1.2.0.tgz", now - 20)

    async def admin_list(qs: str) -> list[tuple[str, str, str]]:
        answer = await call(server, "GET", f"/api/admin/downloads?{qs}", token=admin)
        assert answer.status == 200, answer.body
        return [(d["email"], d["package"], d["version"]) for d in answer.body["downloads"]]

    assert await admin_list("package=left-pad&version=1.3.0") == [
        ("bob@example.com", "left-pad", "1.3.0"),
        ("alice@example.com", "left-pad", "1.3.0"),
    ]
    assert await admin_list("email=ALICE@example.com") == [
        ("alice@example.com", "left-pad", "1.3.0"),
        ("alice@example.com", "demo-app", "1.0.0"),
    ]
    # PyPI names and versions compare normalised.
    assert await admin_list("ecosystem=pypi&package=Demo_App&version=01.0.0") == [
        ("alice@example.com", "demo-app", "1.0.0"),
    ]
    assert await admin_list("package=Demo.App") == [("alice@example.com", "demo-app", "1.0.0")]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 35))
    assert await admin_list(f"since={since}&ecosystem=npm") == [
        ("bob@example.com", "left-pad", "1.2.0"),
        ("bob@example.com", "left-pad", "1.3.0"),
    ]
    assert await admin_list(f"since={int(now - 25)}") == [("bob@example.com", "left-pad", "1.2.0")]
    forbidden = await call(server, "GET", "/api/admin/downloads", token=alice)
    assert forbidden.status == 403


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=not-a-cursor",
        "cursor=" + base64.urlsafe_b64encode(b'["x", 1]').decode(),
        "ecosystem=maven",
        "since=yesterday",
        "package=",
        "colour=blue",
        "email=not-an-address",
    ],
)
async def test_downloads__bad_parameters_are_a_clear_400(server: RunningServer, query: str) -> None:
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    answer = await call(server, "GET", f"/api/admin/downloads?{query}", token=admin)
    assert answer.status == 400, answer.body
    assert isinstance(answer.body["error"], str)
    assert answer.body["error"]
    if not query.startswith("email="):
        mine = await call(server, "GET", f"/api/v1/tokens/downloads?{query}", token=admin)
        assert mine.status == 400, mine.body


# --- pruning ---------------------------------------------------------------------------------


async def test_prune__drops_what_is_older_than_the_setting(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "pkgate.db")
    try:
        user = await ensure_user(store, "dev@example.com")
        token, _ = await issue_token(store, user, name="t")
        from tokenapi.lastused import UsageRecorder

        recorder = UsageRecorder(store)
        now = 2_000_000_000.0
        for days in (200, 91, 89, 1):
            at = now - days * DAY
            recorder.record_download(token.id, "npm", f"d{days}", "1.0.0", "f.tgz", at)
        await recorder.flush()
        # A CI token that expired 91 days ago goes; one that expired 89 days ago stays.
        gone, _ = await issue_token(store, user, name="oidc:a", expires_at=now - 91 * DAY)
        kept, _ = await issue_token(store, user, name="oidc:b", expires_at=now - 89 * DAY)
        assert await prune(store, 90, now) == 2
        left = await store.list_downloads(_everything())
        assert sorted(r.download.package for r in left) == ["d1", "d89"]
        assert await store.get_token(gone.id) is None
        assert await store.get_token(kept.id) is not None
        assert await store.get_token(token.id) is not None

        # The background pruner runs at start-up with its clock: 30 days from 10 days later.
        clock = now + 10 * DAY
        async with pruning(store, 30, clock=lambda: clock), asyncio.timeout(30):
            while len(left := await store.list_downloads(_everything())) != 1:
                await asyncio.sleep(0.01)
        assert [r.download.package for r in left] == ["d1"]
    finally:
        await store.close()


# --- CLI -------------------------------------------------------------------------------------


async def test_cli_downloads__lists_with_filters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = await Store.open(data / "pkgate.db")
    try:
        from tokenapi.lastused import UsageRecorder

        recorder = UsageRecorder(store)
        for email, name, version in (
            ("a@example.com", "left-pad", "1.3.0"),
            ("b@example.com", "left-pad", "1.2.0"),
            ("b@example.com", "demo-app", "2.0"),
        ):
            user = await ensure_user(store, email)
            token, _ = await issue_token(store, user, name="cli-test")
            eco = "pypi" if name == "demo-app" else "npm"
            recorder.record_download(token.id, eco, name, version, f"{name}-{version}.tgz")
        await recorder.flush()
    finally:
        await store.close()
    out = await run(
        *pkgate_cmd("downloads", "--package", "left-pad", "--json", "--data-dir", str(data))
    )
    assert out.returncode == 0, out.output
    rows = json.loads(out.stdout)
    assert sorted((r["email"], r["version"]) for r in rows) == [
        ("a@example.com", "1.3.0"),
        ("b@example.com", "1.2.0"),
    ]
    out = await run(*pkgate_cmd("downloads", "--email", "b@example.com", "--data-dir", str(data)))
    assert out.returncode == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "EMAIL", "TOKEN"]
    assert len(lines) == 3
    assert "demo-app" in out.stdout
    assert "a@example.com" not in out.stdout
    out = await run(*pkgate_cmd("downloads", "--email", "nope", "--data-dir", str(data)))
    assert out.returncode != 0
    assert "email" in out.stderr.lower()


# --- shutdown --------------------------------------------------------------------------------


async def test_sigterm__flushes_downloads_still_in_memory(
    tmp_path: Path, registry: NpmRegistry
) -> None:
    data = tmp_path / "proc-data"
    store = await Store.open(data / "pkgate.db")
    try:
        user = await ensure_user(store, "ci@example.com")
        token, secret = await issue_token(store, user, name="ci")
    finally:
        await store.close()
    # A flush interval far beyond the test: only the shutdown flush can write the history.
    server = ServerProcess(
        data, ["--npm-upstream", f"{registry.url}/", "--last-used-flush", "3600"]
    )
    await server.start()
    try:
        for name, version in (("pkg-plain", "1.1.0"), ("@acme/scoped", "2.0.0")):
            path = registry.tarball_path(registry.package(name, version))
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    server.url.with_path("/npm" + path),
                    headers={"Authorization": f"Bearer {secret}"},
                ) as resp,
            ):
                assert resp.status == 200
                await resp.read()
        store = await Store.open(data / "pkgate.db")
        try:
            assert await store.list_downloads(_everything()) == []  # still in memory
        finally:
            await store.close()
    finally:
        assert await server.stop(signal.SIGTERM) == 0
    store = await Store.open(data / "pkgate.db")
    try:
        rows = await store.list_downloads(_everything())
    finally:
        await store.close()
    assert sorted((r.download.package, r.download.version) for r in rows) == [
        ("@acme/scoped", "2.0.0"),
        ("pkg-plain", "1.1.0"),
    ]
    assert {r.download.token_id for r in rows} == {token.id}


async def test_anonymous_downloads__are_not_recorded(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    server = await start_server(npm_upstream=str(registry.url) + "/", anonymous="allow")
    path = registry.tarball_path(registry.package("pkg-plain", "1.1.0"))
    async with aiohttp.ClientSession() as http, http.get(server.url / "npm" / path[1:]) as resp:
        await resp.read()
        assert resp.status == 200
    secret = await server.token()
    assert await fetch(server, "/npm" + path, secret) == 200
    await server.recorder.flush()
    rows = await server.store.list_downloads(_everything())
    assert [r.token_name for r in rows] == ["test"]  # only the one with a token


async def test_crash__loses_at_most_one_flush_interval(
    tmp_path: Path, registry: NpmRegistry
) -> None:
    data = tmp_path / "crash-data"
    store = await Store.open(data / "pkgate.db")
    try:
        user = await ensure_user(store, "ci@example.com")
        _, secret = await issue_token(store, user, name="ci")
    finally:
        await store.close()
    interval = 0.3
    server = ServerProcess(
        data, ["--npm-upstream", f"{registry.url}/", "--last-used-flush", str(interval)]
    )
    await server.start()
    try:
        path = registry.tarball_path(registry.package("pkg-plain", "1.1.0"))
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                server.url.with_path("/npm" + path), headers={"Authorization": f"Bearer {secret}"}
            ) as resp,
        ):
            assert resp.status == 200
            await resp.read()
        # Written by the periodic flush (another process: watch its database), then kill -9.
        store = await Store.open(data / "pkgate.db")
        try:
            async with asyncio.timeout(20):
                while not await store.list_downloads(_everything()):
                    await asyncio.sleep(interval / 4)
        finally:
            await store.close()
    finally:
        assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
    store = await Store.open(data / "pkgate.db")
    try:
        rows = await store.list_downloads(_everything())
    finally:
        await store.close()
    assert [(r.download.package, r.download.version) for r in rows] == [("pkg-plain", "1.1.0")]
