"""The supply-chain engine as pure modules: versions, OSV records, sources, blocklist, decisions."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.supplychain import blocklist as blocklist_mod
from proxy.supplychain import manual, npmview, osv, sources
from proxy.supplychain.blocklist import Blocklist, NewEntry
from proxy.supplychain.policy import format_duration
from proxy.supplychain.versions import Event, Range, npm_key

NOW = 1_800_000_000.0
DAY = 86400.0


def mal(
    record_id: str,
    name: str,
    ecosystem: str = "npm",
    versions: list[str] | None = None,
    ranges: list[Any] | None = None,
    summary: str = "Malicious code",
) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}}
    if versions is not None:
        affected["versions"] = versions
    if ranges is not None:
        affected["ranges"] = ranges
    return {"id": record_id, "summary": summary, "affected": [affected]}


def semver_range(*events: dict[str, str], kind: str = "SEMVER") -> dict[str, Any]:
    return {"type": kind, "events": list(events)}


# -- versions -------------------------------------------------------------------------------------


def test_semver_precedence_follows_semver_2() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
        "2.0.0",
    ]
    keys = [npm_key(v) for v in ordered]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert npm_key("1.0.0+build.7") == npm_key("1.0.0")  # build metadata is ignored
    assert npm_key("not-a-version") is None


@pytest.mark.parametrize(
    ("events", "inside", "outside"),
    [
        (
            [{"introduced": "0"}, {"fixed": "1.2.3"}],
            ["0.0.1", "1.2.2", "1.2.3-rc.1"],
            ["1.2.3", "2.0.0"],
        ),
        (
            [{"introduced": "1.0.0"}, {"last_affected": "1.4.0"}],
            ["1.0.0", "1.4.0", "1.2.0-beta.1"],
            ["0.9.9", "1.4.1", "1.0.0-rc.1"],
        ),
        (
            [{"introduced": "1.0.0"}, {"fixed": "1.1.0"}, {"introduced": "2.0.0"}],
            ["1.0.5", "2.0.0", "9.0.0"],
            ["1.1.0", "1.9.9"],
        ),
    ],
)
def test_npm_ranges_use_semver_precedence(
    events: list[dict[str, str]], inside: list[str], outside: list[str]
) -> None:
    entry = osv.entries(mal("MAL-1", "pkg", ranges=[semver_range(*events)]))[0]
    for version in inside:
        assert entry.matches(version), version
    for version in outside:
        assert not entry.matches(version), version


def test_pypi_ranges_use_pep440() -> None:
    record = mal(
        "MAL-2",
        "Some_Pkg",
        "PyPI",
        ranges=[semver_range({"introduced": "1.0"}, {"fixed": "1.10"}, kind="ECOSYSTEM")],
    )
    entry = osv.entries(record)[0]
    assert entry.package == "some-pkg"
    assert entry.matches("1.9.post1")
    assert entry.matches("1.2rc1")  # PEP 440: 1.2rc1 > 1.0
    assert not entry.matches("1.10")
    assert not entry.matches("1.10.0")  # same version as 1.10 under PEP 440
    assert not entry.matches("0.9")


def test_explicit_pypi_versions_compare_normalised() -> None:
    entry = osv.entries(mal("MAL-3", "x", "PyPI", versions=["1.0.0"]))[0]
    assert entry.matches("1.0")
    assert entry.matches("1.0.0")
    assert not entry.matches("1.0.1")


def test_a_record_with_neither_versions_nor_ranges_blocks_the_package() -> None:
    entry = osv.entries(mal("MAL-4", "evil"))[0]
    assert entry.whole
    assert entry.matches("0.0.1")
    assert entry.matches("anything")


def test_range_events_are_sorted_before_evaluation() -> None:
    rng = Range.build("npm", [Event("fixed", "2.0.0"), Event("introduced", "1.0.0")])
    key = npm_key("1.5.0")
    assert key is not None
    assert rng.contains(key)


@pytest.mark.parametrize(
    "record",
    [
        "not an object",
        {"summary": "no id"},
        {"id": "MAL-5", "affected": "nope"},
        {"id": "MAL-6", "affected": [{"package": {"ecosystem": "npm", "name": 3}}]},
        mal("MAL-7", "x", ranges=[semver_range({"introduced": "banana"})]),
        mal("MAL-8", "x", ranges=[semver_range({"fixed": "1.0.0"})]),
        mal("MAL-9", "x", versions="1.0.0"),  # type: ignore[arg-type]
    ],
)
def test_malformed_records_raise(record: Any) -> None:
    with pytest.raises(osv.Malformed):
        osv.entries(record)


def test_other_ecosystems_and_withdrawn_records_block_nothing() -> None:
    assert osv.entries(mal("MAL-10", "x", "Go")) == []
    assert osv.entries({**mal("MAL-11", "x"), "withdrawn": "2024-01-01T00:00:00Z"}) == []


def test_summary_is_one_short_line() -> None:
    record = mal("MAL-12", "x", summary="line one\nline two\x1b[31m" + "x" * 500)
    summary = osv.entries(record)[0].summary
    assert "\n" not in summary
    assert "\x1b" not in summary
    assert len(summary) <= osv.MAX_REASON


# -- sources --------------------------------------------------------------------------------------


def write_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_sources_read_every_layout(tmp_path: Path) -> None:
    one = mal("MAL-20", "a")
    two = mal("MAL-21", "b")
    (tmp_path / "one.json").write_bytes(orjson.dumps(one))
    (tmp_path / "array.json").write_bytes(orjson.dumps([one, two, mal("MAL-22", "g", "Go")]))
    tree = tmp_path / "osv" / "malicious" / "npm"
    (tree / "a").mkdir(parents=True)
    (tree / "b").mkdir(parents=True)
    (tree / "a" / "MAL-20.json").write_bytes(orjson.dumps(one))
    (tree / "b" / "MAL-21.json").write_bytes(orjson.dumps(two))
    (tree / "b" / "broken.json").write_bytes(b"{not json")
    write_zip(
        tmp_path / "all.zip",
        {"MAL-20.json": orjson.dumps(one), "MAL-21.json": orjson.dumps(two), "x.json": b"["},
    )
    assert len(sources.read_local(str(tmp_path / "one.json")).records) == 1
    array = sources.read_local(str(tmp_path / "array.json"))
    assert (len(array.records), array.total) == (2, 3)  # the Go record is not kept
    directory = sources.read_local(str(tmp_path / "osv"))
    assert (len(directory.records), directory.malformed) == (2, 1)
    archive = sources.read_local(str(tmp_path / "all.zip"))
    assert (len(archive.records), archive.malformed) == (2, 1)


def test_broken_sources_fail_as_a_whole(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_bytes(b"[{")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    for name in ("bad.json", "bad.zip", "missing.json"):
        with pytest.raises(sources.SourceError):
            sources.read_local(str(tmp_path / name))


def test_an_oversize_record_in_a_zip_is_skipped_unread(tmp_path: Path) -> None:
    huge = b" " * (sources.MAX_RECORD + 10) + orjson.dumps(mal("MAL-30", "a"))
    write_zip(tmp_path / "z.zip", {"huge.json": huge, "ok.json": orjson.dumps(mal("MAL-31", "b"))})
    loaded = sources.read_local(str(tmp_path / "z.zip"))
    assert (len(loaded.records), loaded.malformed) == (1, 1)


def test_display_hides_credentials() -> None:
    shown = sources.display("https://user:secret@feeds.example/osv/all.zip?sig=abc")
    assert "secret" not in shown
    assert "abc" not in shown
    assert shown.endswith("/osv/all.zip")


# -- manual file ----------------------------------------------------------------------------------


def test_manual_blocks_and_allows(tmp_path: Path) -> None:
    text = b"""
[[block]]
ecosystem = "npm"
package = "left-pad"
versions = ["1.3.0"]
reason = "pulled"
id = "SEC-1"

[[block]]
ecosystem = "pypi"
package = "Evil_Pkg"
versions = "*"

[[allow]]
ecosystem = "npm"
package = "falsepos"
versions = "*"
"""
    parsed = manual.parse(text)
    assert [(b.package, b.whole, b.advisory) for b in parsed.blocks] == [
        ("left-pad", False, "SEC-1"),
        ("evil-pkg", True, "manual"),
    ]
    assert parsed.allows[0].covers("9.9.9")
    with pytest.raises(manual.ManualError, match="ecosystem"):
        manual.parse(b'[[block]]\necosystem = "go"\npackage = "x"\n')
    with pytest.raises(manual.ManualError, match="TOML"):
        manual.parse(b"[[block")


# -- blocklist ------------------------------------------------------------------------------------


async def test_blocklist_indexes_filters_kinds_and_allows(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(
        orjson.dumps(
            [
                mal("MAL-40", "evil", versions=["1.0.0"]),
                mal("GHSA-xxxx", "vuln", versions=["1.0.0"]),
                mal("MAL-41", "falsepos"),
                mal("MAL-42", "Req_Uests", "PyPI"),
                {"id": "MAL-43", "affected": 5},
            ]
        )
    )
    rules = tmp_path / "rules.toml"
    rules.write_text('[[allow]]\necosystem = "npm"\npackage = "falsepos"\nversions = ["2.0.0"]\n')
    bl = Blocklist([str(feed)], rules, data_dir=tmp_path / "data")
    await bl.start()
    try:
        assert bl.verdict("npm", "evil", "1.0.0") is not None
        assert bl.verdict("npm", "evil", "1.0.1") is None
        assert bl.verdict("npm", "vuln", "1.0.0") is None  # not MAL-: kinds = malicious
        assert bl.verdict("npm", "falsepos", "1.0.0") is not None
        assert bl.verdict("npm", "falsepos", "2.0.0") is None  # [[allow]]
        assert bl.verdict("pypi", "req.uests", "1.0") is not None  # PyPI names normalised
        assert bl.verdict("npm", "EVIL", "1.0.0") is None  # npm names exact
        status = bl.status()
        assert status["sources"][0]["malformed"] == 1
        assert status["entries"] == 3
        assert status["outcome"] == "ok"
    finally:
        await bl.close()
    everything = Blocklist([str(feed)], kinds="all", data_dir=tmp_path / "data2")
    await everything.start()
    try:
        assert everything.verdict("npm", "vuln", "1.0.0") is not None
    finally:
        await everything.close()


async def test_a_broken_feed_keeps_its_last_good_copy_across_restarts(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps([mal("MAL-50", "evil")]))
    data = tmp_path / "data"
    bl = Blocklist([str(feed)], data_dir=data)
    await bl.start()
    generation = bl.generation
    await bl.refresh()  # the same content again: decisions made on it stay valid
    assert bl.generation == generation
    feed.write_bytes(b"[{ corrupt")
    status = await bl.refresh()
    assert bl.verdict("npm", "evil", "1.0.0") is not None
    assert status["outcome"] == "error"
    assert status["sources"][0]["serving"] == "last-good"
    assert "not valid JSON" in status["errors"][0]
    assert bl.generation == generation  # nothing changed
    await bl.close()

    feed.unlink()  # unreachable at start-up: the copy under data_dir serves
    restarted = Blocklist([str(feed)], data_dir=data)
    await restarted.start()
    try:
        assert restarted.verdict("npm", "evil", "1.0.0") is not None  # before any refresh
        status = await restarted.refresh()
        assert status["sources"][0]["outcome"] == "error"
        assert status["sources"][0]["serving"] == "last-good"
        assert restarted.verdict("npm", "evil", "1.0.0") is not None
    finally:
        await restarted.close()


async def test_new_entries_reach_the_hook_once(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps([mal("MAL-60", "a", versions=["1.0.0"])]))
    data = tmp_path / "data"
    seen: list[list[NewEntry]] = []
    bl = Blocklist([str(feed)], data_dir=data, clock=lambda: NOW)
    bl.new_entry_hooks.append(seen.append)
    await bl.start()
    feed.write_bytes(
        orjson.dumps(
            [
                mal("MAL-60", "a", versions=["1.0.0"]),
                mal("MAL-61", "b", ranges=[semver_range({"introduced": "0"}, {"fixed": "2.0.0"})]),
            ]
        )
    )
    await bl.refresh()
    await bl.refresh()
    await bl.close()
    assert [[e.advisory for e in batch] for batch in seen] == [["MAL-60"], ["MAL-61"]]
    fresh = seen[1][0]
    assert (fresh.ecosystem, fresh.package, fresh.first_seen) == ("npm", "b", NOW)
    assert fresh.matches("1.9.9")
    assert not fresh.matches("2.0.0")
    assert fresh.predicate == {
        "versions": [],
        "ranges": [[{"introduced": "0"}, {"fixed": "2.0.0"}]],
    }
    # A restart remembers what was seen.
    again: list[list[NewEntry]] = []
    restarted = Blocklist([str(feed)], data_dir=data)
    restarted.new_entry_hooks.append(again.append)
    await restarted.start()
    await restarted.close()
    assert again == []


async def test_url_feeds_use_conditional_get_and_survive_failures(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    body = orjson.dumps([mal("MAL-70", "evil")])
    state = {"mode": "ok", "conditional": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.headers["Accept-Encoding"] == "identity"
        if state["mode"] == "gzip":
            return web.Response(body=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
        if state["mode"] == "fail":
            return web.Response(status=503)
        if state["mode"] == "corrupt":
            return web.Response(body=b"PK\x03\x04 not a zip", headers={"ETag": '"v2"'})
        if request.headers.get("If-None-Match") == '"v1"':
            state["conditional"] += 1
            return web.Response(status=304)
        return web.Response(body=body, headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/all.zip", handler)
    server = await aiohttp_server(app)
    url = str(server.make_url("/all.zip"))
    bl = Blocklist([url], data_dir=tmp_path)
    await bl.start()
    try:
        assert bl.verdict("npm", "evil", "1") is not None
        status = await bl.refresh()
        assert state["conditional"] == 1
        assert status["sources"][0]["outcome"] == "not-modified"
        for mode in ("fail", "corrupt", "gzip"):
            state["mode"] = mode
            status = await bl.refresh()
            assert status["sources"][0]["outcome"] == "error"
            assert bl.verdict("npm", "evil", "1") is not None
        await server.close()  # unreachable: nothing listens any more
        status = await bl.refresh()
        assert status["sources"][0]["error"] == "request failed (ClientConnectorError)"
        assert status["sources"][0]["serving"] == "last-good"
        assert bl.verdict("npm", "evil", "1") is not None
    finally:
        await bl.close()


# -- decisions and views --------------------------------------------------------------------------


def test_format_duration() -> None:
    assert [format_duration(s) for s in (259200, 36000, 90, 61)] == ["3d", "10h", "90s", "61s"]
    assert format_duration(600) == "10m"


def test_dist_tags_move_to_the_highest_remaining_version_of_their_kind() -> None:
    remaining = ["1.0.0", "1.1.0", "1.10.0-rc.1", "2.0.0-rc.1", "0.9.0"]
    withheld = {"1.2.0": 1, "2.0.0-rc.2": 1, "3.0.0": 1}
    tags = {"latest": "1.2.0", "next": "2.0.0-rc.2", "stable": "3.0.0", "keep": "0.9.0"}
    assert npmview.retag(tags, remaining, withheld) == {
        "latest": "1.1.0",  # the highest release by semver precedence (not 1.10.0-rc.1)
        "next": "2.0.0-rc.1",  # a prerelease tag: the highest prerelease
        "stable": "1.1.0",
        "keep": "0.9.0",
    }
    assert npmview.retag({"beta": "2.0.0-rc.2"}, ["1.0.0"], withheld) == {}  # dropped


def test_reading_a_tree_or_zip_is_bounded_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "MAL-1.json").write_bytes(orjson.dumps(mal("MAL-1", "a")))
    write_zip(tmp_path / "all.zip", {"MAL-1.json": orjson.dumps(mal("MAL-1", "a"))})
    monkeypatch.setattr(sources, "LOCAL_TIMEOUT", -1.0)  # already past the deadline
    for name in ("tree", "all.zip"):
        with pytest.raises(sources.SourceError, match="reading took longer"):
            sources.read_local(str(tmp_path / name))


async def test_start_up_waits_a_bounded_time_for_a_first_feed(
    tmp_path: Path, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=orjson.dumps([mal("MAL-1", "late")]))

    app = web.Application()
    app.router.add_get("/feed.json", slow)
    server = await aiohttp_server(app)
    monkeypatch.setattr(blocklist_mod, "STARTUP_WAIT", 0.2)
    bl = Blocklist([str(server.make_url("/feed.json"))], data_dir=tmp_path)
    arrived: asyncio.Queue[list[NewEntry]] = asyncio.Queue()
    bl.new_entry_hooks.append(lambda fresh: arrived.put_nowait(list(fresh)))
    try:
        await bl.start()  # returns although the feed has not answered
        assert bl.verdict("npm", "late", "1.0.0") is None
        release.set()
        assert [e.advisory for e in await arrived.get()] == ["MAL-1"]
        assert bl.verdict("npm", "late", "1.0.0") is not None
    finally:
        release.set()
        await bl.close()
