"""The artifact store: verified tarballs, wheels and sdists on disk, bounded in bytes.

It knows files, digests and eviction, never HTTP: ``proxy.registry.delivery`` turns what it
answers into responses.

- ``lookup(key, digest)`` finds a verified file (adopting one another worker wrote).
- ``begin(name)`` starts a ``Download`` into the store, which others may wait for
  (``inflight(name)`` gives the future of its ``Outcome``).  A download writes to a temporary
  file, counts its bytes against the bound while it runs (``reserved``; eviction makes room), and is
  installed by ``finish`` only when the caller says its hash matched.  It stops keeping (the caller
  may still relay) when it would not fit in the bound or when the disk fails, and says so.
- Eviction is LRU by bytes; a file larger than the bound is never kept, and a new file never
  evicts itself.
- ``remembered(name)``, ``load_into_memory(name, digest)``: small files (``SMALL_FILE_MAX``)
  once asked for are also kept in memory, within ``memory_max`` bytes (LRU), read once and
  checked against their digest again as they are read (a file changed on disk is dropped, never
  served), so the many small tarballs of a warm install are answered without opening a file, a
  thread hop and a sendfile per request.

Files live under ``<data_dir>/cache/artifacts/<2 hex>/<64 hex>``: the name is a SHA-256 of the
handler's key and the expected digest, never derived from a client's path, so nothing can escape
that directory and a file always matches the digest the current metadata publishes.  Sizes are
tracked in memory and rebuilt by scanning the directory at start.  Several workers share the
directory: a file written by one is adopted by the others on their first lookup, and each evicts by
its own view of use.  Disk writes, renames, deletes and hashing run in the default executor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import hdrs

from .upstream import UpstreamError

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 256 * 1024
# Strongest first: an SRI string may list several hashes; the strongest supported one is used.
SRI_ALGORITHMS: Final = ("sha512", "sha384", "sha256")
HEX_ALGORITHMS: Final = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512", "md5"})


@dataclass(frozen=True, slots=True)
class Digest:
    """An expected hash of an artifact: a hashlib algorithm name and the raw digest bytes."""

    algorithm: str
    value: bytes

    @classmethod
    def from_sri(cls, integrity: str | None) -> Digest | None:
        """The strongest sha512/sha384/sha256 entry of an SRI string; None when there is none."""
        if not integrity:
            return None
        found: dict[str, bytes] = {}
        for part in integrity.split():
            algorithm, _, b64 = part.partition("-")
            algorithm = algorithm.lower()
            if algorithm not in SRI_ALGORITHMS or algorithm in found:
                continue
            try:
                raw = base64.b64decode(b64.split("?", 1)[0], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == hashlib.new(algorithm).digest_size:
                found[algorithm] = raw
        for algorithm in SRI_ALGORITHMS:
            if algorithm in found:
                return cls(algorithm, found[algorithm])
        return None

    @classmethod
    def from_hex(cls, algorithm: str, hexdigest: str | None) -> Digest | None:
        """A hex digest such as PyPI's ``#sha256=...``; None when malformed or unsupported."""
        algorithm = algorithm.lower()
        if algorithm not in HEX_ALGORITHMS or not hexdigest:
            return None
        try:
            raw = bytes.fromhex(hexdigest)
        except ValueError:
            return None
        if len(raw) != hashlib.new(algorithm).digest_size:
            return None
        return cls(algorithm, raw)

    def hasher(self) -> Any:
        """A fresh hashlib object for this algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, raw: bytes) -> bool:
        return hmac.compare_digest(raw, self.value)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value.hex()}"


class Outcome(enum.Enum):
    """How a download into the store ended."""

    STORED = "stored"  # verified and kept
    MISMATCH = "mismatch"  # the bytes did not match the published hash
    FAILED = "failed"  # the upstream failed or the client left before the end
    NOT_KEPT = "not kept"  # verified or not, the file was not kept (too large, disk error)


@dataclass(slots=True)
class ArtifactStats:
    """Counters for metrics and tests."""

    hits: int = 0
    downloads: int = 0
    coalesced: int = 0
    stored: int = 0
    mismatches: int = 0
    relayed: int = 0
    evictions: int = 0
    too_large: int = 0
    disk_errors: int = 0
    memory_hits: int = 0  # of the hits, answered from memory


# Files up to this size are kept in memory too once asked for (most npm tarballs are far smaller).
SMALL_FILE_MAX: Final = 512 * 1024
DEFAULT_MEMORY_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class InMemory:
    """A stored file's verified bytes, with the validators a response from the file would have."""

    body: bytes
    etag: str  # as aiohttp's FileResponse makes it (unquoted): mtime (ns) and size in hex
    last_modified: str  # as aiohttp formats the file's mtime: whole seconds, rounded up
    # The headers of a hit answered from this copy (validators, ranges, X-Cache), made once.
    headers: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hit = {
            hdrs.ETAG: f'"{self.etag}"',
            hdrs.LAST_MODIFIED: self.last_modified,
            hdrs.ACCEPT_RANGES: "bytes",
            "X-Cache": "HIT",
        }
        object.__setattr__(self, "headers", hit)


class HashMismatch(UpstreamError):
    """The upstream's bytes did not match the hash the metadata published."""

    def __init__(self) -> None:
        super().__init__(502, "upstream artifact does not match the hash its metadata published")


def file_name(key: str, digest: Digest) -> str:
    """The store's file name for ``key`` verified against ``digest``: 64 hex characters."""
    return hashlib.sha256(f"{key}\0{digest}".encode()).hexdigest()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArtifactCache:
    """Verified artifacts on disk with a byte bound, LRU eviction and shared downloads."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        chunk_size: int = CHUNK_SIZE,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self.memory_max = memory_bytes if max_bytes > 0 else 0
        self._memory: OrderedDict[str, InMemory] = OrderedDict()
        self.memory_bytes = 0  # of the bodies kept in memory (counted apart from ``bytes``)
        self._tmp = root / "tmp"
        self._index: OrderedDict[str, int] = OrderedDict()
        self._inflight: dict[str, Download] = {}
        self.bytes = 0  # of the files kept
        self.reserved = 0  # of the temporary files of downloads under way
        self._pending_unlinks: list[Path] = []
        self.stats = ArtifactStats()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    async def start(self) -> None:
        """Create the directory and rebuild the index from the files already there."""
        if self.enabled:
            await asyncio.to_thread(self._scan)

    def _scan(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        for part in self._tmp.iterdir():
            # Leftovers of a crashed process; a live worker's download is left alone.
            pid = part.name.split(".")[1] if part.name.count(".") >= 2 else ""
            if not (pid.isdigit() and pid_alive(int(pid))):
                part.unlink(missing_ok=True)
        found: list[tuple[float, str, int]] = []
        for sub in self.root.iterdir():
            if sub == self._tmp or not sub.is_dir():
                continue
            for path in sub.iterdir():
                st = path.stat()
                found.append((max(st.st_atime, st.st_mtime), path.name, st.st_size))
        found.sort()
        self._index.clear()
        self.bytes = 0
        for _, name, size in found:
            self._index[name] = size
            self.bytes += size
        self._evict_sync()

    def name_for(self, key: str, digest: Digest) -> str:
        """The file name for ``key`` verified against ``digest`` (``file_name``)."""
        return file_name(key, digest)

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def lookup(self, key: str, digest: Digest) -> Path | None:
        """The cached file for ``key`` and ``digest``, marking it used; None on a miss."""
        if not self.enabled:
            return None
        name = self.name_for(key, digest)
        return self._lookup_name(name)

    def lookup_name(self, name: str) -> Path | None:
        """The cached file called ``name`` (see ``name_for``), marking it used; None on a miss."""
        return self._lookup_name(name) if self.enabled else None

    def _lookup_name(self, name: str) -> Path | None:
        path = self._path(name)
        if name in self._index:
            self._index.move_to_end(name)
            return path
        try:
            size = path.stat().st_size  # written by another worker sharing the directory?
        except OSError:
            return None
        self._index[name] = size
        self.bytes += size
        return path

    def remembered(self, name: str) -> InMemory | None:
        """The memory copy of the stored file ``name``, if one is kept (no I/O)."""
        found = self._memory.get(name)
        if found is not None:
            self._memory.move_to_end(name)
            if name in self._index:
                self._index.move_to_end(name)
            self.stats.memory_hits += 1
        return found

    async def load_into_memory(self, name: str, digest: Digest) -> InMemory | None:
        """Keep the stored file ``name`` in memory when it is small; None to serve it from disk.

        Read off the loop and checked against ``digest`` as it is read: a file that no longer
        matches is dropped from the store and None returned (a miss then).  Called once
        ``remembered`` has no copy."""
        size = self._index.get(name)
        if size is None or size > SMALL_FILE_MAX or size > self.memory_max:
            return None
        try:
            loaded = await asyncio.to_thread(_read_verified, self._path(name), digest)
        except OSError:
            return None
        if loaded is None:
            self.stats.mismatches += 1
            log.warning(
                "stored artifact %s no longer matches its %s: dropped", name, digest.algorithm
            )
            self._forget(name)
            await self.flush_evictions()
            return None
        if name not in self._index:  # evicted while it was read
            return None
        self._forget_memory(name)  # a concurrent request may have loaded it too
        self._memory[name] = loaded
        self.memory_bytes += len(loaded.body)
        while self.memory_bytes > self.memory_max:
            _, dropped = self._memory.popitem(last=False)
            self.memory_bytes -= len(dropped.body)
        self.stats.memory_hits += 1
        return loaded

    def _forget_memory(self, name: str) -> None:
        dropped = self._memory.pop(name, None)
        if dropped is not None:
            self.memory_bytes -= len(dropped.body)

    def _forget(self, name: str) -> None:
        """Drop the stored file ``name`` (its deletion waits for ``flush_evictions``)."""
        size = self._index.pop(name, None)
        if size is not None:
            self.bytes -= size
            self._pending_unlinks.append(self._path(name))
        self._forget_memory(name)

    def inflight(self, name: str) -> Download | None:
        """The download of ``name`` under way, if any (its ``future`` gives the outcome)."""
        return self._inflight.get(name)

    def begin(self, name: str, digest: Digest) -> Download:
        """Start the download of ``name``; others find it with ``inflight`` until it ends."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        download = Download(self, name, digest, future)
        self._inflight[name] = download
        return download

    def _end(self, download: Download, outcome: Outcome) -> None:
        if self._inflight.get(download.name) is download:
            del self._inflight[download.name]
        if not download.future.done():
            download.future.set_result(outcome)

    def _reserve(self, n: int) -> bool:
        """Count ``n`` more temporary bytes, evicting old files to make room; False if no room."""
        if self.reserved + n > self.max_bytes:
            return False
        self.reserved += n
        self._make_room()
        return True

    def _unreserve(self, n: int) -> None:
        self.reserved -= n

    def _make_room(self, keep: str | None = None) -> list[Path]:
        victims: list[Path] = []
        while self.bytes + self.reserved > self.max_bytes and self._index:
            name, size = next(iter(self._index.items()))
            if name == keep:
                if len(self._index) == 1:
                    break
                self._index.move_to_end(name)
                continue
            del self._index[name]
            self.bytes -= size
            self._forget_memory(name)
            self.stats.evictions += 1
            victims.append(self._path(name))
        if victims:
            self._pending_unlinks.extend(victims)
        return victims

    async def flush_evictions(self) -> None:
        """Delete the files eviction dropped (off the event loop)."""
        victims, self._pending_unlinks = self._pending_unlinks, []
        if victims:
            await asyncio.to_thread(_unlink_all, victims)

    def _add(self, name: str, size: int) -> None:
        old = self._index.pop(name, None)
        if old is not None:
            self.bytes -= old
        self._forget_memory(name)
        self._index[name] = size
        self.bytes += size

    def _evict_sync(self) -> None:
        self._make_room()
        victims, self._pending_unlinks = self._pending_unlinks, []
        _unlink_all(victims)


class Download:
    """One artifact being written into the store (see ``ArtifactCache.begin``).

    ``open`` then ``write`` each chunk (also hashing it), then ``finish``; ``keeping`` turns False
    for good when the file will not be kept (it would exceed the bound, or the disk failed): the
    caller may go on relaying and verifying, but nothing more is written.  ``end`` resolves the
    outcome others wait for; it runs on every path (``finish`` and ``abandon`` call it).
    """

    def __init__(
        self, store: ArtifactCache, name: str, digest: Digest, future: asyncio.Future[Outcome]
    ) -> None:
        self.store = store
        self.name = name
        self.digest = digest
        self.future = future
        self.hasher = digest.hasher()
        self.size = 0
        self.keeping = True
        self._fh: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._reserved = 0
        self._ended = False
        self.waiters = 0  # requests waiting for this download besides the one that started it

    async def open(self, expected_length: int | None) -> None:
        """Create the temporary file; a length beyond the bound (or a disk error) stops keeping."""
        store = self.store
        if expected_length is not None and expected_length > store.max_bytes:
            self._stop_keeping("too large")
            return
        tmp = store._tmp / f"{self.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            self._fh = await asyncio.to_thread(_open_new, tmp)
        except OSError as exc:
            self._stop_keeping("disk", exc)
            return
        self._tmp = tmp

    async def write(self, chunk: bytes) -> None:
        """Hash ``chunk`` and, while keeping, append it to the temporary file."""
        self.size += len(chunk)
        if self.keeping and not self._grow(len(chunk)):
            await self._discard_tmp()
            self._stop_keeping("too large")
        fh = self._fh if self.keeping else None
        try:
            await asyncio.get_running_loop().run_in_executor(None, _absorb, fh, self.hasher, chunk)
        except OSError as exc:
            await self._discard_tmp()
            self._stop_keeping("disk", exc)

    def matched(self) -> bool:
        """Whether the bytes written so far hash to the published digest."""
        return self.digest.matches(self.hasher.digest())

    async def finish(self) -> Outcome:
        """Install the file if its hash matched and it was kept; resolve the outcome."""
        store = self.store
        if not self.matched():
            store.stats.mismatches += 1
            log.warning(
                "artifact %s did not match its published %s", self.name, self.digest.algorithm
            )
            await self._discard_tmp()
            return self.end(Outcome.MISMATCH)
        if not self.keeping or self._fh is None or self._tmp is None:
            await self._discard_tmp()
            return self.end(Outcome.NOT_KEPT)
        fh, tmp, self._fh, self._tmp = self._fh, self._tmp, None, None
        try:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(_install, tmp, store._path(self.name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
            self._release()
            self._stop_keeping("disk", exc)
            return self.end(Outcome.NOT_KEPT)
        self._release()
        store._add(self.name, self.size)
        store.stats.stored += 1
        store._make_room(keep=self.name)
        await store.flush_evictions()
        return self.end(Outcome.STORED)

    async def abandon(self) -> Outcome:
        """The download broke off (upstream or client): drop the temporary file."""
        return await self.drop(Outcome.FAILED)

    async def drop(self, outcome: Outcome) -> Outcome:
        """Stop without installing anything; ``outcome`` is what waiters learn."""
        await self._discard_tmp()
        return self.end(outcome)

    def end(self, outcome: Outcome) -> Outcome:
        if not self._ended:
            self._ended = True
            self.store._end(self, outcome)
        return outcome

    def _grow(self, n: int) -> bool:
        if not self.store._reserve(n):
            return False
        self._reserved += n
        return True

    def _release(self) -> None:
        if self._reserved:
            self.store._unreserve(self._reserved)
            self._reserved = 0

    def _stop_keeping(self, why: str, exc: OSError | None = None) -> None:
        if not self.keeping:
            return
        self.keeping = False
        if why == "disk":
            self.store.stats.disk_errors += 1
            log.warning(
                "artifact %s not kept: disk error (%s)",
                self.name,
                exc.__class__.__name__ if exc else "?",
            )
        else:
            self.store.stats.too_large += 1

    async def _discard_tmp(self) -> None:
        fh, tmp, self._fh, self._tmp = self._fh, self._tmp, None, None
        self._release()
        if fh is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(fh.close)
        if tmp is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
        await self.store.flush_evictions()


def _open_new(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _absorb(fh: IO[bytes] | None, hasher: Any, chunk: bytes) -> None:
    hasher.update(chunk)  # first: a failing write must not leave the hash behind
    if fh is not None:
        fh.write(chunk)


def _install(tmp: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic on one filesystem: readers see no file or the whole verified file.
    os.replace(tmp, path)


def _read_verified(path: Path, digest: Digest) -> InMemory | None:
    """The whole file if it still matches ``digest`` (None if not), with its validators."""
    with path.open("rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size > SMALL_FILE_MAX:
            return None
        body = fh.read(SMALL_FILE_MAX + 1)
    hasher = digest.hasher()
    hasher.update(body)
    if len(body) != st.st_size or not digest.matches(hasher.digest()):
        return None
    return InMemory(
        body=body,
        etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        last_modified=time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(math.ceil(st.st_mtime))
        ),
    )


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


__all__ = [
    "ArtifactCache",
    "ArtifactStats",
    "Digest",
    "Download",
    "HashMismatch",
    "InMemory",
    "Outcome",
]
