import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import pkgate_cmd, run
from tests.procs import ServerProcess


async def cli(data_dir: Path, *args: str, input: bytes | None = None):
    return await run(*pkgate_cmd(*args, "--data-dir", str(data_dir)), input=input)


async def test_token_create__prints_only_the_secret(tmp_path: Path) -> None:
    result = await cli(tmp_path, "token", "create", "--email", "Dev@Example.com")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pkg_")
    assert len(lines[0]) == 40
    assert lines[0] not in result.stderr


async def test_token_list__json_shows_tokens_without_secrets(tmp_path: Path) -> None:
    secret = (
        await cli(tmp_path, "token", "create", "--email", "a@example.com", "--name", "ci")
    ).stdout.strip()
    result = await cli(tmp_path, "token", "list", "--json")
    rows = json.loads(result.stdout)
    assert [(r["email"], r["name"], r["prefix"]) for r in rows] == [
        ("a@example.com", "ci", secret[:8])
    ]
    assert secret not in result.stdout


async def test_token_list__filters_by_email(tmp_path: Path) -> None:
    await cli(tmp_path, "token", "create", "--email", "a@example.com")
    await cli(tmp_path, "token", "create", "--email", "b@example.com")
    rows = json.loads(
        (await cli(tmp_path, "token", "list", "--json", "--email", "B@example.com")).stdout
    )
    assert [r["email"] for r in rows] == ["b@example.com"]


async def test_token_revoke__unknown_id_fails_cleanly(tmp_path: Path) -> None:
    result = await cli(tmp_path, "token", "revoke", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr


async def test_token_create__bad_email_fails_cleanly(tmp_path: Path) -> None:
    result = await cli(tmp_path, "token", "create", "--email", "not-an-email")
    assert result.returncode == 1
    assert "email" in result.stderr
    assert "Traceback" not in result.stderr


async def test_user_create__password_from_stdin_and_admin(tmp_path: Path) -> None:
    result = await cli(
        tmp_path,
        "user",
        "create",
        "--email",
        "root@example.com",
        "--admin",
        "--password-stdin",
        input=b"correct horse battery\n",
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "pkgate.db") as db:
        is_admin, pw = db.execute(
            "SELECT is_admin, password_hash FROM users WHERE email = 'root@example.com'"
        ).fetchone()
    assert is_admin == 1
    assert pw.startswith("$argon2id$")
    assert "correct horse" not in pw


async def test_user_create__short_password_refused(tmp_path: Path) -> None:
    result = await cli(
        tmp_path, "user", "create", "--email", "r@example.com", "--password-stdin", input=b"short\n"
    )
    assert result.returncode == 1
    assert "at least 8" in result.stderr


@pytest.fixture
async def served(tmp_path: Path):
    server = ServerProcess(tmp_path, ["--npm-upstream", "http://127.0.0.1:9/"])
    await server.start()
    yield server
    await server.stop()


async def wait_for_status(url, headers: dict[str, str], status: int, within: float) -> float:
    """Poll until ``url`` answers ``status``; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while True:
            async with http.get(url, headers=headers) as resp:
                if resp.status == status:
                    return loop.time() - start
            await asyncio.sleep(0.02)


async def test_token_revoke__from_a_shell_takes_effect_in_the_server_within_a_second(
    tmp_path: Path, served: ServerProcess
) -> None:
    secret = (await cli(tmp_path, "token", "create", "--email", "a@example.com")).stdout.strip()
    headers = {"Authorization": f"Bearer {secret}"}
    whoami = served.url / "npm/-/whoami"
    async with aiohttp.ClientSession() as http, http.get(whoami, headers=headers) as resp:
        assert resp.status == 200  # now cached as valid in the server
    token_id = json.loads((await cli(tmp_path, "token", "list", "--json")).stdout)[0]["id"]
    revoked = await cli(tmp_path, "token", "revoke", token_id)
    assert revoked.returncode == 0
    took = await wait_for_status(whoami, headers, 401, within=1.0)
    assert took < 1.0


async def test_token_create__from_a_shell_is_usable_by_the_running_server(
    tmp_path: Path, served: ServerProcess
) -> None:
    secret = (await cli(tmp_path, "token", "create", "--email", "new@example.com")).stdout.strip()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            served.url / "npm/-/whoami", headers={"Authorization": f"Bearer {secret}"}
        ) as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"username": "new@example.com"}


async def test_serve__sigterm_flushes_last_used(tmp_path: Path, served: ServerProcess) -> None:
    secret = (await cli(tmp_path, "token", "create", "--email", "a@example.com")).stdout.strip()
    async with (
        aiohttp.ClientSession() as http,
        http.get(served.url / "npm/-/ping", headers={"Authorization": f"Bearer {secret}"}) as resp,
    ):
        assert resp.status == 200
    assert await served.stop() == 0
    with sqlite3.connect(tmp_path / "pkgate.db") as db:
        (last_used,) = db.execute("SELECT last_used_at FROM tokens").fetchone()
        (requests,) = db.execute(
            "SELECT requests FROM token_usage WHERE ecosystem = 'npm'"
        ).fetchone()
    assert last_used is not None
    assert requests == 1


async def test_cli__every_store_command_on_both_backends(tmp_path: Path, database_url: str) -> None:
    async def pkgate(*args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
        done = await cli(tmp_path, *args, "--database-url", database_url, input=input)
        assert done.returncode == 0, done.output
        return done

    await pkgate(
        "user", "create", "--email", "Root@example.com", "--admin", "--password-stdin",
        input=b"correct horse battery\n",
    )  # fmt: skip
    secret = (await pkgate("token", "create", "--email", "ROOT@example.com")).stdout.strip()
    rows = json.loads(
        (await pkgate("token", "list", "--json", "--email", "root@EXAMPLE.com")).stdout
    )
    assert [(r["email"], r["prefix"]) for r in rows] == [("root@example.com", secret[:8])]
    await pkgate("token", "revoke", rows[0]["id"])
    assert json.loads((await pkgate("token", "list", "--json")).stdout) == []
    again = await cli(tmp_path, "token", "revoke", rows[0]["id"], "--database-url", database_url)
    assert again.returncode == 1
    assert "not found" in again.stderr
