"""A blocklist feed update mails the downloader exactly once (SPEC 16), end to end: a local OSV
feed directory read by the real blocklist, downloads through pkgate, a real SMTP server."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.api_support import call
from tests.conftest import RunningServer, StartServer, pkgate_cmd, run
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi.keys import breach_key


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


async def test_feed_update__mails_the_downloader_once_across_refreshes_and_restarts(
    start_server: StartServer, registry: NpmRegistry, mail: SmtpServer, tmp_path: Path
) -> None:
    feed = tmp_path / "feed"
    publish(feed, "MAL-2026-0001", "unrelated", ["1.0.0"])
    settings = {
        "npm_upstream": str(registry.url) + "/",
        "smtp_url": mail.url,
        "blocklist_feeds": (str(feed),),
    }
    server = await start_server(**settings)
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    secret = await server.token("dev@example.com", name="laptop")
    bystander = await server.token("other@example.com")
    await download(server, registry, secret, "1.1.0")
    await download(server, registry, bystander, "1.0.0")

    publish(feed, "MAL-2026-0002", "pkg-plain", ["1.1.0"])
    refreshed = await call(server, "POST", "/api/admin/blocklist/refresh", token=admin)
    assert refreshed.status == 200, refreshed.body
    await server.app[breach_key].wait_idle()
    assert [str(m["To"]) for m in mail.inbox.messages] == ["dev@example.com"]
    assert "MAL-2026-0002" in mail.inbox.messages[0]["Subject"]
    text = mail.inbox.text()
    assert "pkg-plain 1.1.0 (npm)" in text
    assert f'token "laptop" ({secret[:8]}…)' in text
    assert "Malicious code in pkg-plain" in text

    # The next refresh finds nothing new; the admin status shows what was sent.
    assert (await call(server, "POST", "/api/admin/blocklist/refresh", token=admin)).status == 200
    await server.app[breach_key].wait_idle()
    assert len(mail.inbox.messages) == 1
    status = await call(server, "GET", "/api/admin/blocklist", token=admin)
    assert status.body["breach_notifications"]["notifications"]["sent"] == 1
    assert status.body["breach_notifications"]["send_failures"] == 0
    data_dir = str(server.settings.data_dir)
    shown = await run(*pkgate_cmd("blocklist", "status", "--json", "--data-dir", data_dir))
    assert shown.returncode == 0, shown.output
    assert json.loads(shown.stdout)["breach_notifications"]["notifications"]["sent"] == 1
    text = await run(*pkgate_cmd("blocklist", "status", "--data-dir", data_dir))
    assert "breach mails: 1 sent, 0 pending, 0 failed, 0 skipped" in text.stdout, text.output
    await server.close()

    # Restart on the same data, and even lose the blocklist's memory of what it had seen:
    # the store's record of notifications still keeps anyone from a second mail.
    (server.settings.data_dir / "blocklist" / "seen.json").unlink()
    again = await start_server(**settings)
    await again.app[breach_key].wait_idle()
    assert len(mail.inbox.messages) == 1
    status = await call(again, "GET", "/api/admin/blocklist", token=admin)
    assert status.body["breach_notifications"]["notifications"]["sent"] == 1
