"""A blocklist feed update mails the downloader exactly once (SPEC 16), end to end: a local OSV
feed directory read by the real blocklist, downloads through pkgate, a real SMTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.breachwire import connect
from proxy.supplychain.blocklist import Blocklist
from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer, smtp_server
from tests.upstreams.npm_registry import NpmRegistry, serve_registry
from tokenapi.keys import breach_key


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    async with serve_registry() as reg:
        yield reg


@pytest.fixture
def mail() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def publish(feed: Path, record_id: str, package: str, versions: list[str]) -> None:
    """An OSV record in the OpenSSF malicious-packages layout."""
    place = feed / "osv" / "malicious" / "npm" / package
    place.mkdir(parents=True, exist_ok=True)
    record = {
        "id": record_id,
        "modified": "2026-12-01T00:00:00Z",
        "summary": f"Malicious code in {package}",
        "affected": [{"package": {"ecosystem": "npm", "name": package}, "versions": versions}],
    }
    (place / f"{record_id}.json").write_text(json.dumps(record))


async def download(server: RunningServer, registry: NpmRegistry, secret: str, version: str) -> None:
    path = registry.tarball_path(registry.package("pkg-plain", version)).lstrip("/")
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url / "npm" / path, headers={"Authorization": f"Bearer {secret}"}) as resp,
    ):
        await resp.read()
        assert resp.status == 200


async def with_blocklist(server: RunningServer, feed: Path) -> Blocklist:
    blocklist = Blocklist([str(feed)], data_dir=server.settings.data_dir, refresh=3600)
    connect(server.app, blocklist)
    await blocklist.start()
    return blocklist


async def test_feed_update__mails_the_downloader_once_across_refreshes_and_restarts(
    start_server: StartServer, registry: NpmRegistry, mail: SmtpServer, tmp_path: Path
) -> None:
    feed = tmp_path / "feed"
    publish(feed, "MAL-2026-0001", "unrelated", ["1.0.0"])
    settings = {"npm_upstream": str(registry.url) + "/", "smtp_url": mail.url}
    server = await start_server(**settings)
    blocklist = await with_blocklist(server, feed)
    try:
        secret = await server.token("dev@example.com", name="laptop")
        bystander = await server.token("other@example.com")
        await download(server, registry, secret, "1.1.0")
        await download(server, registry, bystander, "1.0.0")

        publish(feed, "MAL-2026-0002", "pkg-plain", ["1.1.0"])
        await blocklist.refresh()
        await server.app[breach_key].wait_idle()
        assert [str(m["To"]) for m in mail.inbox.messages] == ["dev@example.com"]
        assert "MAL-2026-0002" in mail.inbox.messages[0]["Subject"]
        text = mail.inbox.text()
        assert "pkg-plain 1.1.0 (npm)" in text
        assert f'token "laptop" ({secret[:8]}…)' in text
        assert "Malicious code in pkg-plain" in text

        await blocklist.refresh()  # nothing new
        await server.app[breach_key].wait_idle()
        assert len(mail.inbox.messages) == 1
        # The tarball is now refused, so nothing new can be downloaded after first-seen.
        assert blocklist.verdict("npm", "pkg-plain", "1.1.0") is not None
    finally:
        await blocklist.close()
    await server.close()

    # Restart on the same data, and even lose the blocklist's memory of what it had seen:
    # the store's record of notifications still keeps anyone from a second mail.
    (server.settings.data_dir / "blocklist" / "seen.json").unlink()
    again = await start_server(**settings)
    blocklist = await with_blocklist(again, feed)
    try:
        await again.app[breach_key].wait_idle()
        assert len(mail.inbox.messages) == 1
        status = await again.app[breach_key].status()
        assert status["notifications"]["sent"] == 1
    finally:
        await blocklist.close()
