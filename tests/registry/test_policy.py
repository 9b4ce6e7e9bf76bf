"""The policy stage of the pipeline: what a policy decides reaches every npm and PyPI answer.

A recording policy stands in for the supply-chain engine: it withholds one npm version (and moves
``latest`` off it), blocks one npm package whole, and withholds one PyPI release; the tests check
each kind of answer the seam covers, that the policy sees publish times (from the full packument
even for the abbreviated form; PEP 700 upload times for PyPI), that decisions are memoised per
generation, and that the artifact-served hook sees complete downloads only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.registry.pipeline import ArtifactServed, registry_key
from proxy.registry.policy import (
    ALLOW,
    POLICY_HEADER,
    Decision,
    Ecosystem,
    NoPolicy,
    PackageFacts,
    Refusal,
    RefusalKind,
)
from tests.conftest import RunningServer
from tests.pypi.conftest import basic
from tests.upstreams.npm_registry import CORGI, NpmRegistry
from tests.upstreams.pypi_index import JSON_TYPE, PypiIndex
from tokenapi.store import Token

WITHHELD = Refusal(RefusalKind.QUARANTINED, "pkg-plain@1.1.0 is withheld", "min_release_age")
BLOCKED = Refusal(RefusalKind.BLOCKED, "@acme/scoped is blocked: malware (MAL-1)", "blocklist")
PYPI_WITHHELD = Refusal(RefusalKind.QUARANTINED, "demo-app 1.0.0 is withheld", "min_release_age")


@dataclass
class RecordingPolicy:
    active: bool = True
    generation: int = 1
    needs_publish_times: bool = True
    enforcing: bool = True
    decided: list[PackageFacts] = field(default_factory=list)
    applied_to: list[tuple[str | None, str, str | None]] = field(default_factory=list)

    def decide(self, facts: PackageFacts) -> Decision:
        self.decided.append(facts)
        if not self.enforcing:
            return ALLOW
        if facts.ecosystem is Ecosystem.NPM and facts.name == "pkg-plain":
            return Decision(removed={"1.1.0": WITHHELD}, dist_tags={"latest": "1.0.0"})
        if facts.ecosystem is Ecosystem.NPM and facts.name == "@acme/scoped":
            return Decision(refusal=BLOCKED)
        if facts.ecosystem is Ecosystem.PYPI and facts.name == "demo-app":
            return Decision(removed={"1.0.0": PYPI_WITHHELD})
        return ALLOW

    def applied(
        self, token: Token | None, facts: PackageFacts, decision: Decision, version: str | None
    ) -> None:
        self.applied_to.append((token.id if token else None, facts.name, version))


@pytest.fixture
def policy(server: RunningServer) -> RecordingPolicy:
    recording = RecordingPolicy()
    server.app[registry_key].policy = recording
    return recording


@pytest.fixture
async def secret(server: RunningServer) -> str:
    return await server.token()


@pytest.fixture
async def http(server: RunningServer, secret: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}
    ) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(URL(path, encoded=True), **kwargs) as resp:
        return resp, await resp.read()


def test_policy__default_is_inactive_and_allows_everything() -> None:
    facts = PackageFacts(Ecosystem.NPM, "x", {"1.0.0": None})
    assert NoPolicy().active is False
    assert NoPolicy().decide(facts).allows_all


@pytest.mark.parametrize("accept", [None, CORGI])
async def test_policy__npm_packument_loses_removed_versions_and_gets_the_tags(
    policy: RecordingPolicy, http: aiohttp.ClientSession, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    resp, body = await get(http, "/npm/pkg-plain", headers=headers)
    assert resp.status == 200
    doc = json.loads(body)
    assert sorted(doc["versions"]) == ["1.0.0"]
    assert doc["dist-tags"] == {"latest": "1.0.0"}
    if accept is None:
        assert "1.1.0" not in doc["time"]
        assert "1.0.0" in doc["time"]
    # Publish times come from the full packument, also for the abbreviated form.
    judged = [f for f in policy.decided if f.name == "pkg-plain"]
    assert judged
    assert all(f.times_known for f in judged)
    assert judged[-1].published["1.1.0"] is not None
    # A second request is answered from the memoised decision and the kept variant.
    again, again_body = await get(http, "/npm/pkg-plain", headers=headers)
    assert again_body == body
    assert again.headers["ETag"] == resp.headers["ETag"]
    assert len([f for f in policy.decided if f.name == "pkg-plain"]) == len(judged)


async def test_policy__npm_version_document_and_tarball_of_a_removed_version_are_403(
    policy: RecordingPolicy,
    registry: NpmRegistry,
    http: aiohttp.ClientSession,
    server: RunningServer,
    secret: str,
) -> None:
    resp, body = await get(http, "/npm/pkg-plain/1.1.0")
    assert resp.status == 403
    assert resp.headers[POLICY_HEADER] == "quarantined"
    assert json.loads(body) == {"error": WITHHELD.message}
    latest, latest_body = await get(http, "/npm/pkg-plain/latest")
    assert latest.status == 200
    assert json.loads(latest_body)["version"] == "1.0.0"
    _tags, tags_body = await get(http, "/npm/-/package/pkg-plain/dist-tags")
    assert json.loads(tags_body) == {"latest": "1.0.0"}
    tar, tar_body = await get(http, "/npm/pkg-plain/-/pkg-plain-1.1.0.tgz")
    assert tar.status == 403
    assert tar.headers[POLICY_HEADER] == "quarantined"
    assert json.loads(tar_body) == {"error": WITHHELD.message}
    assert registry.tarball_requests() == []
    ok, ok_body = await get(http, "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz")
    assert ok.status == 200
    assert ok_body == registry.package("pkg-plain", "1.0.0").tarball
    token = await server.validator.validate(secret)
    assert token is not None
    assert (token.id, "pkg-plain", "1.1.0") in policy.applied_to


async def test_policy__npm_package_refused_whole(
    policy: RecordingPolicy, http: aiohttp.ClientSession
) -> None:
    for path in ("/npm/@acme%2fscoped", "/npm/@acme/scoped/2.0.0"):
        resp, body = await get(http, path)
        assert resp.status == 403
        assert resp.headers[POLICY_HEADER] == "blocked"
        assert json.loads(body) == {"error": BLOCKED.message}


async def test_policy__a_new_generation_decides_again(
    policy: RecordingPolicy, http: aiohttp.ClientSession
) -> None:
    _, body = await get(http, "/npm/pkg-plain")
    assert sorted(json.loads(body)["versions"]) == ["1.0.0"]
    policy.enforcing = False
    _, unchanged = await get(http, "/npm/pkg-plain")
    assert unchanged == body  # same generation: the memoised decision holds
    policy.generation += 1
    _, again = await get(http, "/npm/pkg-plain")
    assert sorted(json.loads(again)["versions"]) == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize("accept", [JSON_TYPE, "text/html"])
async def test_policy__pypi_page_loses_the_files_of_removed_versions(
    policy: RecordingPolicy,
    server: RunningServer,
    secret: str,
    index: PypiIndex,
    accept: str,
) -> None:
    async with aiohttp.ClientSession(headers=basic(secret)) as http:
        async with http.get(f"{server.url}/pypi/simple/demo-app/", headers={"Accept": accept}) as r:
            assert r.status == 200
            text = await r.text()
        if accept == JSON_TYPE:
            doc = json.loads(text)
            names = [f["filename"] for f in doc["files"]]
            assert "1.0.0" not in doc["versions"]
            assert "2.0.0" in doc["versions"]
            link = next(f["url"] for f in json.loads(text)["files"])
        else:
            names = [
                n
                for n in ("demo_app-1.0.0-py3-none-any.whl", "demo_app-2.0.0-py3-none-any.whl")
                if n in text
            ]
            link = ""
        assert not any("-1.0.0" in n for n in names)
        assert any("-2.0.0" in n for n in names)
        judged = [f for f in policy.decided if f.name == "demo-app"]
        assert judged[-1].files
        assert all(f.uploaded is not None for f in judged[-1].files)
        assert judged[-1].published["1.0.0"] is not None
        # Direct requests for the withheld release's files (and .metadata) are refused.
        wheel = index.find("demo_app-1.0.0-py3-none-any.whl")
        path = f"{server.url}/pypi/files/1{index.file_path(wheel)}"
        for url in (path, path + ".metadata"):
            async with http.get(url) as resp:
                assert resp.status == 403
                assert resp.headers[POLICY_HEADER] == "quarantined"
                assert await resp.json() == {"error": PYPI_WITHHELD.message}
        assert index.file_requests() == []
        if link:
            async with http.get(link) as resp:
                assert resp.status == 200


async def test_policy__artifact_served_hook_sees_complete_downloads(
    server: RunningServer,
    registry: NpmRegistry,
    http: aiohttp.ClientSession,
    secret: str,
) -> None:
    seen: list[ArtifactServed] = []
    server.app[registry_key].on_served.append(seen.append)
    package = registry.package("pkg-plain", "1.0.0")
    for _ in range(2):  # a miss streamed while stored, then a hit from disk
        resp, body = await get(http, "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz")
        assert resp.status == 200
        assert body == package.tarball
    async with http.head(URL("/npm/pkg-plain/-/pkg-plain-1.0.0.tgz")) as head:
        assert head.status == 200
    ranged, _ = await get(
        http, "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz", headers={"Range": "bytes=0-9"}
    )
    assert ranged.status == 206
    token = await server.validator.validate(secret)
    assert token is not None
    expected = ArtifactServed(
        token.id, "npm", "pkg-plain", "1.0.0", "pkg-plain-1.0.0.tgz", len(package.tarball)
    )
    assert seen == [expected, expected]
