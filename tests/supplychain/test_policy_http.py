"""The policy on the wire: packuments, version documents, tarballs, project pages and files."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.npm.notice import MAX_NOTICE, withheld_notice
from proxy.registry.policy import Refusal, RefusalKind
from proxy.supplychain.service import supplychain_key

from .conftest import BLOCKED_ID, BLOCKED_REASON, PYPI_BLOCKED_ID, Policed, feed_records

CORGI = "application/vnd.npm.install-v1+json"
PYPI_JSON = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
async def http(policed: Policed) -> AsyncIterator[aiohttp.ClientSession]:
    token = await policed.server.token()
    async with aiohttp.ClientSession(
        base_url=policed.server.url, headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, **headers: str) -> Any:
    async with http.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(content_type=None)


async def refused(http: aiohttp.ClientSession, path: str, rule: str) -> str:
    async with http.get(path) as resp:
        assert resp.status == 403, await resp.text()
        assert resp.headers["X-Pkgate-Policy"] == rule
        message: str = (await resp.json())["error"]
        return message


async def test_npm_packuments_lose_blocked_and_young_versions(
    policed: Policed, http: aiohttp.ClientSession
) -> None:
    for accept in (CORGI, "application/json"):
        doc = await get_json(http, "/npm/pkg-sc", Accept=accept)
        assert sorted(doc["versions"]) == ["1.0.0"], accept
        assert doc["dist-tags"] == {"latest": "1.0.0"}
        if "time" in doc:
            assert set(doc["time"]) == {"created", "modified", "1.0.0"}
    assert (await get_json(http, "/npm/pkg-sc/latest"))["version"] == "1.0.0"
    assert await get_json(http, "/npm/-/package/pkg-sc/dist-tags") == {"latest": "1.0.0"}

    message = await refused(http, "/npm/pkg-sc/1.1.0", "blocked")
    assert message == f"pkg-sc@1.1.0 is blocked: {BLOCKED_REASON} ({BLOCKED_ID})"
    assert message == await refused(http, "/npm/pkg-sc/-/pkg-sc-1.1.0.tgz", "blocked")
    young = await refused(http, "/npm/pkg-sc/-/pkg-sc-1.2.0.tgz", "quarantined")
    assert young.startswith("pkg-sc@1.2.0 is withheld until ")
    assert ": published 1d 0h ago, minimum age 3d" in young
    assert young == await refused(http, "/npm/pkg-sc/1.2.0", "quarantined")
    async with http.get("/npm/pkg-sc/-/pkg-sc-1.0.0.tgz") as resp:
        assert resp.status == 200

    whole = await refused(http, "/npm/pkg-evil", "blocked")
    assert whole == "pkg-evil is blocked: Malicious code in pkg-evil (npm) (MAL-2026-0003)"
    await refused(http, "/npm/pkg-evil/-/pkg-evil-1.0.0.tgz", "blocked")
    # Nothing withheld was ever fetched from the upstream.
    fetched = [r.path for r in policed.registry.tarball_requests()]
    assert fetched == ["/pkg-sc/-/pkg-sc-1.0.0.tgz"], fetched


async def test_a_quarantine_that_ends_shows_the_version_on_the_next_request(
    policed: Policed, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    for accept in (CORGI, "application/json"):
        doc = await get_json(http, "/npm/pkg-sc", Accept=accept)
        assert sorted(doc["versions"]) == ["1.0.0"], accept
    # pkg-sc 1.2.0 was published a day ago under a 3d minimum age: two days and a bit later it
    # is old enough, while 1.1.0 stays blocked (so a policy variant is still served).
    later = time.time() + 2 * 86400 + 60
    policed.server.app[supplychain_key].engine.clock = lambda: later
    monkeypatch.setattr(time, "time", lambda: later)
    for accept in (CORGI, "application/json"):
        doc = await get_json(http, "/npm/pkg-sc", Accept=accept)
        assert sorted(doc["versions"]) == ["1.0.0", "1.2.0"], accept
        assert doc["dist-tags"] == {"latest": "1.2.0"}
    async with http.get("/npm/pkg-sc/-/pkg-sc-1.2.0.tgz") as resp:
        assert resp.status == 200


async def test_pypi_pages_lose_withheld_files(
    policed: Policed, http: aiohttp.ClientSession
) -> None:
    page = await get_json(http, "/pypi/simple/sc-demo/", Accept=PYPI_JSON)
    names = sorted(f["filename"] for f in page["files"])
    assert names == [
        "sc_demo-1.0-py3-none-any.whl",
        "sc_demo-1.0.tar.gz",
        "sc_demo-1.3-py3-none-any.whl",  # no upload time: kept (and counted)
    ]
    assert page["versions"] == ["1.0", "1.3"]
    async with http.get("/pypi/simple/sc-demo/", headers={"Accept": "text/html"}) as resp:
        html = await resp.text()
    assert "sc_demo-1.0-py3-none-any.whl" in html
    assert "sc_demo-1.1-py3" not in html
    assert "sc_demo-1.2-py3" not in html

    blocked = policed.index.find("sc_demo-1.1-py3-none-any.whl")
    path = policed.index.file_path(blocked)
    files = {f["filename"]: f["url"] for f in page["files"]}
    allowed_url = files["sc_demo-1.0-py3-none-any.whl"]
    withheld_url = allowed_url.replace("sc_demo-1.0-py3", "sc_demo-1.1-py3")
    assert path.rpartition("/")[2] in withheld_url
    message = await refused(http, withheld_url, "blocked")
    assert message == (
        f"sc-demo@1.1 is blocked: Malicious code in sc-demo (PyPI) ({PYPI_BLOCKED_ID})"
    )
    await refused(http, withheld_url + ".metadata", "blocked")
    young_url = allowed_url.replace("sc_demo-1.0-py3", "sc_demo-1.2-py3")
    assert "is withheld until" in await refused(http, young_url, "quarantined")
    async with http.get(allowed_url) as resp:
        assert resp.status == 200

    whole = await refused(http, "/pypi/simple/sc-evil/", "blocked")
    assert whole == "sc-evil is blocked: Malicious code in sc-evil (PyPI) (MAL-2026-0004)"


async def test_a_feed_change_reaches_cached_metadata_at_the_next_refresh(
    policed: Policed, http: aiohttp.ClientSession
) -> None:
    doc = await get_json(http, "/npm/pkg-app", Accept=CORGI)
    assert list(doc["versions"]) == ["1.0.0"]
    records = feed_records()
    records.append(
        {
            "id": "MAL-2026-0099",
            "summary": "Malicious code in pkg-app (npm)",
            "affected": [
                {
                    "package": {"ecosystem": "npm", "name": "pkg-app"},
                    "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}],
                }
            ],
        }
    )
    policed.write_feed(records)
    chain = policed.server.app[supplychain_key]
    assert chain.blocklist is not None
    await chain.blocklist.refresh()
    await refused(http, "/npm/pkg-app", "blocked")  # the packument is still cached upstream-wise

    async with http.get("/metrics") as resp:
        metrics = await resp.text()
    assert 'pkgate_policy_decisions_total{action="refused",ecosystem="npm",rule="blocked"}' in (
        metrics
    )
    assert "pkgate_blocklist_malformed_records 1.0" in metrics


async def test_npm_packuments_name_what_was_withheld_in_npm_notice(
    http: aiohttp.ClientSession,
) -> None:
    """Both forms carry one ASCII ``npm-notice`` line naming each withheld version and why; the
    version document and an untouched packument carry none."""
    for accept in (CORGI, "application/json"):
        for _ in range(2):  # the second answer is the memoised variant: the same header
            async with http.get("/npm/pkg-sc", headers={"Accept": accept}) as resp:
                assert resp.status == 200
                notice = resp.headers["npm-notice"]
                assert resp.headers["Cache-Control"] == "private, no-store"
            assert notice.startswith("pkgate withheld "), notice
            assert f"pkg-sc@1.1.0 is blocked: {BLOCKED_REASON} ({BLOCKED_ID})" in notice
            assert "; pkg-sc@1.2.0 is withheld until " in notice
            assert notice.isascii()
            assert len(notice) <= MAX_NOTICE
    async with http.get("/npm/pkg-sc/1.0.0") as resp:
        assert resp.status == 200
        assert "npm-notice" not in resp.headers
    async with http.get("/npm/pkg-app", headers={"Accept": CORGI}) as resp:
        assert resp.status == 200
        assert "npm-notice" not in resp.headers
        assert resp.headers["Cache-Control"] == "private, max-age=300"


def test_the_notice_is_printable_ascii_and_bounded() -> None:
    refusals = {
        f"1.{i}.0": Refusal(
            RefusalKind.BLOCKED, f"x@1.{i}.0 is blocked: \u00e9vil\r\nSet: 1 (MAL-{i})"
        )
        for i in range(50)
    }
    notice = withheld_notice(refusals)
    assert notice is not None
    assert len(notice) <= MAX_NOTICE
    assert notice.startswith("pkgate withheld x@1.0.0 is blocked: ?vil??Set: 1 (MAL-0); ")
    assert all(" " <= c <= "~" for c in notice)
    shown = notice.count("is blocked")
    assert notice.endswith(f"; and {50 - shown} more")
    assert withheld_notice({}) is None
    one = {"1.0.0": Refusal(RefusalKind.BLOCKED, "y" * 1000)}
    assert withheld_notice(one) == "pkgate withheld 1 versions"
