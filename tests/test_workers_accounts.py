"""Two real workers (``pkgate serve --workers 2``) share what protects accounts: the limits on
token creation and failed logins are one count, registrations of one address mail exactly one
token (and it works), and many CLI processes creating tokens for new addresses all succeed.

Requests are pinned to a worker by a kept-alive connection whose owner is read from the kernel
(see tests/test_workers.py), so both workers are known to have served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import _while_busy
from tests.api_support import TOKEN_RE, code_in
from tests.conftest import free_port, pkgate_cmd, run
from tests.smtp import SmtpServer
from tests.test_workers import Connection, children_of, owner_of, server_socket_inode
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store

pytestmark = pytest.mark.usefixtures("needs_linux")


class Pinned(Connection):
    """A kept-alive connection to one worker that can send any request."""

    async def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
        }
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, json.loads(payload) if payload else None


@dataclass
class Workers:
    data: Path
    port: int
    pinned: list[Pinned]  # one connection per worker


@pytest.fixture
async def workers(tmp_path: Path, mail: SmtpServer) -> AsyncIterator[Workers]:
    data = tmp_path / "data"
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        *pkgate_cmd(
            "serve", "--workers", "2", "--port", str(port), "--data-dir", str(data),
            "--npm-upstream", "http://127.0.0.1:9/", "--access-log", "false",
            "--smtp-url", mail.url, "--register-limit-email", "100",
            "--register-limit-ip", "1000",
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    owned: dict[int, Pinned] = {}
    spare: list[Pinned] = []
    try:
        pids: set[int] = set()
        async with asyncio.timeout(60):
            while len(pids) < 2:
                assert server.returncode is None, "server exited"
                pids = children_of(server.pid)
                await asyncio.sleep(0.05)
        async with asyncio.timeout(60):
            while len(owned) < 2:
                try:
                    conn = await Pinned.open(port)
                    status, _ = await conn.request("GET", "/healthz")
                except (ConnectionError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)
                    continue
                assert status == 200
                inode = server_socket_inode(port, conn.local_port)
                owner = owner_of(inode, pids) if inode is not None else None
                assert owner in pids
                if owner in owned:
                    spare.append(conn)
                else:
                    owned[owner] = conn
        yield Workers(data, port, list(owned.values()))
    finally:
        for conn in [*owned.values(), *spare]:
            await conn.close()
        if server.returncode is None:
            server.terminate()
        await asyncio.wait_for(server.communicate(), 60)


async def cli(data: Path, *args: str, stdin: bytes | None = None) -> str:
    done = await run(*pkgate_cmd(*args, "--data-dir", str(data)), input=stdin)
    assert done.returncode == 0, done.output
    return done.stdout.strip()


async def test_workers__named_token_limit_is_one_count_for_both(workers: Workers) -> None:
    secret = await cli(workers.data, "token", "create", "--email", "limit@example.com")
    statuses = []
    for i in range(60):
        conn = workers.pinned[i % 2]
        status, _ = await conn.request("POST", "/api/tokens", {"name": f"t{i}"}, secret)
        statuses.append(status)
    assert statuses.count(201) == 20  # token_create_limit, not 20 per worker
    assert statuses.count(429) == 40
    assert statuses[:20] == [201] * 20


async def test_workers__failed_login_limit_is_one_count_for_both(workers: Workers) -> None:
    await cli(
        workers.data,
        "user", "create", "--email", "victim@example.com", "--password-stdin",
        stdin=b"correct horse battery staple\n",
    )  # fmt: skip
    statuses = []
    for i in range(40):
        status, _ = await workers.pinned[i % 2].request(
            "POST", "/api/session", {"email": "victim@example.com", "password": f"guess-{i}"}
        )
        statuses.append(status)
    assert statuses == [401] * 10 + [429] * 30  # login_limit, not 10 per worker


async def test_workers__concurrent_registrations_of_one_address_mail_one_working_token(
    workers: Workers, mail: SmtpServer
) -> None:
    email = "race@example.com"
    extra = [await Pinned.open(workers.port) for _ in range(18)]
    conns = [*workers.pinned, *extra]
    try:
        answers = await asyncio.gather(
            *(c.request("POST", "/api/v1/tokens", {"email": email}) for c in conns)
        )
    finally:
        for conn in extra:
            await conn.close()
    assert [status for status, _ in answers] == [202] * 20
    subjects = [m["Subject"] for m in mail.inbox.messages]
    assert subjects.count("Your pkgate token") == 1
    assert subjects.count("Your pkgate reset code") == 19
    welcome = next(
        i for i, m in enumerate(mail.inbox.messages) if m["Subject"] == "Your pkgate token"
    )
    (secret,) = set(TOKEN_RE.findall(mail.inbox.text(welcome)))
    status, body = await workers.pinned[0].request("GET", "/npm/-/whoami", token=secret)
    assert (status, body) == (200, {"username": email})
    status, _ = await workers.pinned[1].request("GET", "/npm/-/whoami", token=secret)
    assert status == 200
    listed = json.loads(await cli(workers.data, "token", "list", "--json"))
    assert len(listed) == 1
    # Every mailed reset code works too (until one of them is used).
    codes = {code_in(mail.inbox.text(i)) for i in range(20) if i != welcome}
    assert len(codes) == 19
    status, body = await workers.pinned[1].request(
        "POST", "/api/v1/tokens/reset", {"email": email, "code": sorted(codes)[0]}
    )
    assert status == 200
    assert body["token"] != secret


async def test_workers__concurrent_cli_token_creates_for_new_addresses_all_succeed(
    tmp_path: Path,
) -> None:
    # Real processes (each starts a Python): 16 at once, half on one new address.
    data = tmp_path / "data"
    emails = ["same@example.com"] * 8 + [f"new{i}@example.com" for i in range(8)]
    done = await asyncio.gather(
        *(
            run(*pkgate_cmd("token", "create", "--email", e, "--data-dir", str(data)))
            for e in emails
        )
    )
    assert [d.output for d in done if d.returncode != 0] == []
    assert len({d.stdout.strip() for d in done}) == 16
    listed = json.loads(await cli(data, "token", "list", "--json"))
    assert len(listed) == 16
    assert len({t["email"] for t in listed}) == 9


async def test_store__a_hundred_concurrent_creates_from_separate_connections_all_succeed(
    database_url: str,
) -> None:
    # What 100 concurrent ``pkgate token create`` do to the database, without starting 100
    # interpreters: 20 stores (each its own connections, as separate processes have) running
    # 100 creates at once, half of them for the same new address, each the way the CLI runs it
    # (waiting while the database is busy).
    stores = [await Store.open(database_url) for _ in range(20)] * 5
    try:
        emails = ["same@example.com"] * 50 + [f"new{i}@example.com" for i in range(50)]

        async def create(store: Store, email: str) -> str:
            async def once() -> str:
                user = await ensure_user(store, email)
                _, secret = await issue_token(store, user, name="cli")
                return secret

            return await _while_busy(once)

        secrets_ = await asyncio.gather(
            *(create(s, e) for s, e in zip(stores, emails, strict=True))
        )
        assert len(set(secrets_)) == 100
        listed = await stores[0].list_tokens()
        assert len(listed) == 100
        assert len({t.email for t in listed}) == 51
    finally:
        for store in stores[:20]:
            await store.close()
