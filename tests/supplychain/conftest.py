"""A fake npm registry and simple index with versions published at chosen times, an OSV feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import NpmRegistry, build_package, serve_registry
from tests.upstreams.pypi_index import Published, PypiIndex, build_sdist, build_wheel, serve_index

OLD = "2024-01-02T00:00:00.000Z"
BLOCKED_ID = "MAL-2026-0001"
BLOCKED_REASON = "Malicious code in pkg-sc (npm)"
PYPI_BLOCKED_ID = "MAL-2026-0002"
PYPI_BLOCKED_REASON = "Malicious code in sc-demo (PyPI)"


def yesterday() -> str:
    """A publish time one day ago: younger than a 3d minimum release age."""
    return (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def npm_packages() -> list[Any]:
    """pkg-sc: 1.0.0 (fine), 1.1.0 (in the feed), 1.2.0 (published yesterday); pkg-evil: blocked
    whole; pkg-app depends on pkg-sc ^1.0.0."""
    young = build_package("pkg-sc", "1.2.0")
    young.published = yesterday()
    return [
        build_package("pkg-sc", "1.0.0"),
        build_package("pkg-sc", "1.1.0"),
        young,
        build_package("pkg-evil", "1.0.0"),
        build_package("pkg-app", "1.0.0", dependencies={"pkg-sc": "^1.0.0"}),
    ]


def pypi_projects() -> list[Published]:
    """sc-demo: 1.0 (fine), 1.1 (in the feed), 1.2 (uploaded yesterday), 1.3 (no upload time,
    needs Python 4 so no client picks it); sc-evil: blocked whole."""
    return [
        Published(build_wheel("sc-demo", "1.0")),
        Published(build_sdist("sc-demo", "1.0"), with_metadata=False),
        Published(build_wheel("sc-demo", "1.1")),
        Published(build_wheel("sc-demo", "1.2"), upload_time=yesterday()),
        Published(
            build_wheel("sc-demo", "1.3", requires_python=">=4"),
            requires_python=">=4",
            upload_time=None,
        ),
        Published(build_wheel("sc-evil", "0.1")),
    ]


def feed_records() -> list[dict[str, Any]]:
    return [
        {
            "id": BLOCKED_ID,
            "summary": BLOCKED_REASON,
            "affected": [
                {"package": {"ecosystem": "npm", "name": "pkg-sc"}, "versions": ["1.1.0"]}
            ],
        },
        {
            "id": "MAL-2026-0003",
            "summary": "Malicious code in pkg-evil (npm)",
            "affected": [{"package": {"ecosystem": "npm", "name": "pkg-evil"}}],
        },
        {
            "id": PYPI_BLOCKED_ID,
            "summary": PYPI_BLOCKED_REASON,
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": "SC_Demo"},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": "1.1"}, {"fixed": "1.2"}]}
                    ],
                }
            ],
        },
        {
            "id": "MAL-2026-0004",
            "summary": "Malicious code in sc-evil (PyPI)",
            "affected": [{"package": {"ecosystem": "PyPI", "name": "sc-evil"}}],
        },
        {"id": "MAL-2026-0005", "affected": "not a list"},  # malformed: skipped, counted
    ]


@dataclass
class Policed:
    """A pkgate with the supply-chain policy on, in front of both fake upstreams."""

    server: RunningServer
    registry: NpmRegistry
    index: PypiIndex
    feed: Path

    def write_feed(self, records: list[dict[str, Any]]) -> None:
        self.feed.write_bytes(orjson.dumps(records))


@pytest.fixture
async def policed(start_server: StartServer, tmp_path: Path) -> AsyncIterator[Policed]:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps(feed_records()))
    async with (
        serve_registry(packages=npm_packages()) as registry,
        serve_index(published=pypi_projects()) as index,
    ):
        server = await start_server(
            npm_upstream=str(registry.url) + "/",
            pypi_upstream=str(index.index_url),
            pypi_files_upstream=(str(index.files_url) + "/",),
            blocklist_feeds=(str(feed),),
            min_release_age=3 * 86400.0,
        )
        yield Policed(server, registry, index, feed)
