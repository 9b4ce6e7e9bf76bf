"""The blocklist: OSV feeds plus the manual file, indexed by (ecosystem, package), refreshed.

Life of a refresh (every ``refresh`` seconds, on ``request_refresh()``, or ``await refresh()``):
each source is read (a URL with a conditional GET; a 304 keeps what we hold); a source that
cannot be read keeps its last good entries, from memory or from its copy under
``<data_dir>/blocklist/``, and its error is reported in ``status()`` - never treated as empty.
A source read successfully replaces its copy on disk (written atomically).  Then the index is
rebuilt off the event loop and swapped in one assignment, and ``generation`` moves on whenever
what is blocked changed, so views derived from metadata know to recompute.

New entries (hook for breach notifications): after every refresh, entries whose
(advisory, ecosystem, package) was never seen before are passed, as ``NewEntry`` objects, to
every callable in ``Blocklist.new_entry_hooks`` (sync or async; called on the event loop in
order; an exception is logged and does not stop the others).  First-seen times are kept in
``<data_dir>/blocklist/seen.json`` so a restart does not report old entries again.  Only entries
that are in force count (``blocklist_kinds`` applies; ``[[allow]]`` exceptions do not hide them:
an allowed version may still have been downloaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from . import manual as manual_mod
from . import osv, sources
from .manual import Allow, Manual, ManualError
from .osv import Entry, package_key
from .sources import SourceError

log = logging.getLogger("pkgate.blocklist")

KINDS: Final = ("malicious", "all")
SNAPSHOT_VERSION: Final = 1
STATUS_FILE: Final = "status.json"
STARTUP_WAIT: Final = 30.0  # seconds start-up waits for feeds that have no last good copy


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry first seen by this refresh: what breach notifications need to know."""

    advisory: str
    summary: str
    ecosystem: str
    package: str  # as compared: npm exact, PyPI normalised
    predicate: dict[str, Any]  # JSON-able description of the versions covered
    first_seen: float  # epoch seconds
    entry: Entry

    def matches(self, version: str) -> bool:
        """Whether ``version`` of ``package`` is covered by this entry."""
        return self.entry.matches(version)


NewEntryHook = Callable[[Sequence[NewEntry]], Awaitable[None] | None]


@dataclass(slots=True)
class SourceState:
    """What we hold of one source and how its last refresh went."""

    source: str
    entries: list[Entry] = field(default_factory=list)
    records: int = 0
    malformed: int = 0
    etag: str | None = None
    last_modified: str | None = None
    loaded: bool = False  # holds a good copy (fresh or from disk)
    last_attempt: float | None = None
    last_success: float | None = None
    outcome: str = "never"  # "ok", "not-modified", "error", "never"
    error: str | None = None
    serial: int = 0  # moves on whenever ``entries`` is replaced

    def describe(self) -> dict[str, Any]:
        return {
            "source": sources.display(self.source),
            "kind": "url" if sources.is_url(self.source) else "path",
            "entries": len(self.entries),
            "records": self.records,
            "malformed": self.malformed,
            "last_attempt": self.last_attempt,
            "last_success": self.last_success,
            "outcome": self.outcome,
            "error": self.error,
            "serving": "last-good"
            if self.outcome == "error" and self.loaded
            else ("current" if self.loaded else "nothing"),
        }


class Index:
    """Entries by (ecosystem, package); allows likewise.  Immutable once built."""

    __slots__ = ("allows", "by_package", "entries")

    def __init__(self, entries: Sequence[Entry] = (), allows: Sequence[Allow] = ()) -> None:
        grouped: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            grouped.setdefault((entry.ecosystem, entry.package), []).append(entry)
        self.by_package: dict[tuple[str, str], tuple[Entry, ...]] = {
            k: tuple(v) for k, v in grouped.items()
        }
        grouped_allows: dict[tuple[str, str], list[Allow]] = {}
        for allow in allows:
            grouped_allows.setdefault((allow.ecosystem, allow.package), []).append(allow)
        self.allows = {k: tuple(v) for k, v in grouped_allows.items()}
        self.entries = len(entries)

    def lookup(self, ecosystem: str, name: str) -> tuple[Entry, ...] | None:
        """Every entry of a package (``name`` already in compared form), or None."""
        return self.by_package.get((ecosystem, name))

    def allowed(self, ecosystem: str, name: str, version: str) -> bool:
        allows = self.allows.get((ecosystem, name))
        return allows is not None and any(a.covers(version) for a in allows)

    def verdict(self, ecosystem: str, name: str, version: str) -> Entry | None:
        """The entry blocking ``version`` (``name`` in compared form), or None."""
        found = self.by_package.get((ecosystem, name))
        if not found:
            return None
        for entry in found:
            if entry.matches(version):
                return None if self.allowed(ecosystem, name, version) else entry
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot keeps of a record: enough to rebuild its entries."""
    out: dict[str, Any] = {k: record[k] for k in ("id", "summary", "withdrawn") if k in record}
    if "summary" not in out and isinstance(record.get("details"), str):
        out["details"] = record["details"][:400]
    affected = record.get("affected")
    if isinstance(affected, list):
        out["affected"] = [
            {k: item[k] for k in ("package", "versions", "ranges") if k in item}
            for item in affected
            if isinstance(item, dict)
        ]
    return out


def _entries_from(loaded: sources.Loaded, source: str) -> tuple[list[Entry], list[Any], int]:
    """Entries of a freshly read source, the records to snapshot and the malformed count."""
    entries: list[Entry] = []
    kept: list[Any] = []
    malformed = loaded.malformed
    for record in loaded.records:
        try:
            found = osv.entries(record, source)
        except osv.Malformed:
            malformed += 1
            continue
        entries.extend(found)
        kept.append(_strip(record))
    return entries, kept, malformed


class Blocklist:
    """The feeds, the manual file, the index and the refresh loop."""

    def __init__(
        self,
        feeds: Sequence[str] = (),
        manual_file: Path | None = None,
        *,
        kinds: str = "malicious",
        data_dir: Path,
        refresh: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if kinds not in KINDS:
            raise ValueError(f"blocklist_kinds must be one of {', '.join(KINDS)}")
        self.kinds = kinds
        self.manual_file = manual_file
        self.refresh_interval = refresh
        self.dir = data_dir / "blocklist"
        self._clock = clock
        self.states = [SourceState(s) for s in dict.fromkeys(feeds)]
        self.manual = Manual()
        self.manual_state = SourceState(str(manual_file)) if manual_file else None
        self.index = Index()
        self.generation = 0
        self.refreshes = 0
        self.last_refresh: float | None = None
        self.new_entry_hooks: list[NewEntryHook] = []
        self._seen: dict[str, float] = {}
        self._fingerprint: object = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._refreshed = asyncio.Event()  # set once a refresh has ended
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.states) or self.manual_file is not None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the last good copies, refresh once, then keep refreshing in the background."""
        if not self.configured:
            return
        await asyncio.to_thread(self._load_disk)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        first_load = not all(s.loaded for s in self.states)
        if not first_load:
            # Every feed has its last good copy in force: refresh without holding start-up.
            await self._read_manual()
            self.index = Index(self._in_force(), self.manual.allows)
            self.generation += 1
        self._wake.set()  # the loop refreshes at once
        self._task = asyncio.get_running_loop().create_task(self._loop())
        if first_load:
            # A feed never read before: hold start-up for it, but not for ever (a slow or hung
            # download keeps going in the background and takes effect when it ends).
            try:
                await asyncio.wait_for(self._refreshed.wait(), STARTUP_WAIT)
            except TimeoutError:
                log.warning(
                    "blocklist: feeds still loading after %gs; serving meanwhile without the "
                    "feeds that have no earlier copy",
                    STARTUP_WAIT,
                )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_refresh(self) -> None:
        """Ask the background loop to refresh now (e.g. ``pkgate blocklist refresh``)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("blocklist refresh failed")

    # -- disk --------------------------------------------------------------------------------

    def _snapshot_path(self, source: str) -> Path:
        return self.dir / "feeds" / f"{sources.slug(source)}.json"

    def _load_disk(self) -> None:
        seen = self.dir / "seen.json"
        with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError, ValueError):
            data = orjson.loads(seen.read_bytes())
            if isinstance(data, dict):
                self._seen = {str(k): float(v) for k, v in data.items()}
        for state in self.states:
            path = self._snapshot_path(state.source)
            try:
                doc = orjson.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning(
                    "blocklist: last good copy of %s is unreadable: %s",
                    sources.display(state.source),
                    exc,
                )
                continue
            if not isinstance(doc, dict) or doc.get("version") != SNAPSHOT_VERSION:
                continue
            entries, _, _ = _entries_from(
                sources.Loaded(list(doc.get("records", []))), state.source
            )
            state.entries = entries
            state.serial += 1
            state.records = int(doc.get("records_total", 0))
            state.malformed = int(doc.get("malformed", 0))
            state.etag = doc.get("etag")
            state.last_modified = doc.get("last_modified")
            state.last_success = doc.get("fetched_at")
            state.loaded = True

    def _save_snapshot(self, state: SourceState, kept: list[Any]) -> None:
        doc = {
            "version": SNAPSHOT_VERSION,
            "source": sources.display(state.source),
            "etag": state.etag,
            "last_modified": state.last_modified,
            "fetched_at": state.last_success,
            "records_total": state.records,
            "malformed": state.malformed,
            "records": kept,
        }
        _atomic_write(self._snapshot_path(state.source), orjson.dumps(doc))

    # -- refresh -----------------------------------------------------------------------------

    async def _read_source(self, state: SourceState) -> None:
        now = self._clock()
        state.last_attempt = now
        downloaded: Path | None = None
        try:
            if sources.is_url(state.source):
                assert self._session is not None
                answer = await sources.download(
                    self._session,
                    state.source,
                    self.dir / "tmp",
                    state.etag if state.loaded else None,
                    state.last_modified if state.loaded else None,
                )
                if answer.path is None:
                    state.outcome, state.error, state.last_success = "not-modified", None, now
                    return
                downloaded = answer.path
                loaded = await asyncio.to_thread(sources.read_file, downloaded)
                etag, modified = answer.etag, answer.last_modified
            else:
                loaded = await asyncio.to_thread(sources.read_local, state.source)
                etag = modified = None
            entries, kept, malformed = await asyncio.to_thread(_entries_from, loaded, state.source)
        except SourceError as exc:
            state.outcome, state.error = "error", str(exc)
            log.warning(
                "blocklist: source %s failed (%s); %s",
                sources.display(state.source),
                exc,
                "keeping its last good copy" if state.loaded else "no earlier copy to use",
            )
            return
        finally:
            if downloaded is not None:
                with contextlib.suppress(OSError):
                    downloaded.unlink()
        if entries != state.entries:  # the same content read again changes nothing
            state.entries = entries
            state.serial += 1
        state.records, state.malformed = loaded.total, malformed
        state.etag, state.last_modified = etag, modified
        state.loaded, state.outcome, state.error, state.last_success = True, "ok", None, now
        if malformed:
            log.warning(
                "blocklist: source %s: %d malformed records skipped",
                sources.display(state.source),
                malformed,
            )
        try:
            await asyncio.to_thread(self._save_snapshot, state, kept)
        except OSError as exc:
            log.warning(
                "blocklist: cannot keep a copy of %s: %s", sources.display(state.source), exc
            )

    async def _read_manual(self) -> None:
        if self.manual_file is None or self.manual_state is None:
            return
        state = self.manual_state
        state.last_attempt = self._clock()
        try:
            manual = await asyncio.to_thread(manual_mod.load, self.manual_file)
        except ManualError as exc:
            state.outcome, state.error = "error", str(exc)
            log.warning("blocklist: blocklist_file %s: %s", self.manual_file, exc)
            return
        if manual != self.manual:
            self.manual = manual
            state.entries = list(manual.blocks)
            state.serial += 1
        state.records = len(self.manual.blocks) + len(self.manual.allows)
        state.loaded, state.outcome, state.error = True, "ok", None
        state.last_success = state.last_attempt

    def _in_force(self) -> list[Entry]:
        out: list[Entry] = []
        for state in self.states:
            if self.kinds == "all":
                out.extend(state.entries)
            else:
                out.extend(e for e in state.entries if osv.is_malicious(e.advisory))
        out.extend(self.manual.blocks)
        return out

    async def refresh(self) -> dict[str, Any]:
        """Re-read every source now; returns ``status()``."""
        async with self._lock:
            await asyncio.gather(*(self._read_source(s) for s in self.states))
            await self._read_manual()
            entries = self._in_force()
            fingerprint = (
                tuple(s.serial for s in self.states),
                self.manual_state.serial if self.manual_state else 0,
            )
            if fingerprint != self._fingerprint:
                self.index = await asyncio.to_thread(Index, entries, self.manual.allows)
                self._fingerprint = fingerprint
                self.generation += 1
            self.refreshes += 1
            self.last_refresh = self._clock()
            fresh = self._new_entries(entries)
            if fresh:
                await asyncio.to_thread(self._save_seen)
            await asyncio.to_thread(self._save_status, self.status())
        if fresh:
            await self._notify(fresh)
        self._refreshed.set()
        return self.status()

    def _new_entries(self, entries: Sequence[Entry]) -> list[NewEntry]:
        now = self._clock()
        fresh: list[NewEntry] = []
        for entry in entries:
            key = f"{entry.advisory}|{entry.ecosystem}|{entry.package}"
            if key in self._seen:
                continue
            self._seen[key] = now
            fresh.append(
                NewEntry(
                    advisory=entry.advisory,
                    summary=entry.summary,
                    ecosystem=entry.ecosystem,
                    package=entry.package,
                    predicate=entry.predicate(),
                    first_seen=now,
                    entry=entry,
                )
            )
        return fresh

    @property
    def status_path(self) -> Path:
        return self.dir / STATUS_FILE

    def _save_status(self, status: dict[str, Any]) -> None:
        """The status after a refresh, for ``pkgate blocklist status`` (no server needed)."""
        try:
            _atomic_write(self.status_path, orjson.dumps({**status, "pid": os.getpid()}))
        except OSError as exc:
            log.warning("blocklist: cannot write %s: %s", self.status_path, exc)

    def _save_seen(self) -> None:
        try:
            _atomic_write(self.dir / "seen.json", orjson.dumps(self._seen))
        except OSError as exc:
            log.warning("blocklist: cannot record first-seen times: %s", exc)

    async def _notify(self, fresh: list[NewEntry]) -> None:
        log.info("blocklist: %d new entries", len(fresh))
        for hook in list(self.new_entry_hooks):
            try:
                result = hook(fresh)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("blocklist: a new-entry hook failed")

    # -- queries -----------------------------------------------------------------------------

    def lookup(self, ecosystem: str, name: str) -> tuple[Entry, ...] | None:
        """Entries of a package by its name as the registry spells it."""
        return self.index.lookup(ecosystem, package_key(ecosystem, name))

    def verdict(self, ecosystem: str, name: str, version: str) -> Entry | None:
        return self.index.verdict(ecosystem, package_key(ecosystem, name), version)

    def status(self) -> dict[str, Any]:
        """Sources, counts, last refresh and its outcome, errors (the admin API's answer)."""
        listed = [s.describe() for s in self.states]
        if self.manual_state is not None:
            listed.append({**self.manual_state.describe(), "kind": "manual"})
        errors = [f"{s['source']}: {s['error']}" for s in listed if s["error"]]
        by_eco: dict[str, int] = {}
        for (eco, _), found in self.index.by_package.items():
            by_eco[eco] = by_eco.get(eco, 0) + len(found)
        return {
            "kinds": self.kinds,
            "refresh_interval": self.refresh_interval,
            "last_refresh": self.last_refresh,
            "outcome": "error" if errors else ("ok" if self.refreshes else "never"),
            "refreshes": self.refreshes,
            "generation": self.generation,
            "entries": self.index.entries,
            "packages": len(self.index.by_package),
            "entries_by_ecosystem": by_eco,
            "allows": sum(len(a) for a in self.index.allows.values()),
            "sources": listed,
            "errors": errors,
        }
