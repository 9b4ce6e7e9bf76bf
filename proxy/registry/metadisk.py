"""The metadata cache's second tier: upstream metadata answers kept on disk under ``data_dir``.

A restarted pkgate, or another worker on the same ``data_dir``, finds there what the upstream last
sent for a document: younger than ``metadata_ttl`` it is used without asking the upstream at all
(``X-Cache: DISK``); older, it is revalidated with the validators it came with, so an unchanged
document costs the upstream a 304 and no body (``X-Cache: REVALIDATED``); while the upstream
fails, a copy up to ``metadata_stale_max`` old is served as ``STALE``, as the memory tier does.
The bytes kept are the upstream's as received, content coding included, so a stored answer goes
through the same bounded decoding, the same rewrite and the same policy as a fresh one: nothing
pkgate derives is trusted from disk.

One file per (URL, Accept) under ``cache/metadata/``, named by their SHA-256: a header line of
JSON (URL, Accept, content type and coding, validators, body length and SHA-256), then the body.
The disk is not trusted either: a file is used only when its header parses, names the same URL
and Accept, and its body has the stated length (within the caller's limit) and hash; anything
else is deleted and counts as absent.  Files are written to a temporary name and renamed into
place, so a reader sees the old copy or the new one, never half of one.  A file's modification
time is when the upstream last gave or confirmed it.

Its I/O runs on two threads of its own, one reading and one writing, so that a lookup never
waits behind the worker threads busy parsing large documents (a lookup is on the path of every
metadata miss).  Writes are not waited for: the answer goes out while its copy is written, and
when more than ``MAX_PENDING`` bytes wait the copy is skipped; stopping waits for them.

The tier is bounded by ``metadata_disk_bytes``: when what a process has written since it last
looked passes an eighth of the bound, it lists the directory and deletes the oldest files until
the total is within it (workers sharing the directory may together pass the bound by that eighth
each).  A full or failing disk never fails a request: the answer is served from memory and the
failure is counted and logged once.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from .artifacts import pid_alive
from .decode import Held
from .metacache import Validators

log = logging.getLogger(__name__)

SUFFIX: Final = ".meta"
TMP_PREFIX: Final = "tmp-"
MAX_HEADER: Final = 16 * 1024
MAX_PENDING: Final = 64 * 1024 * 1024  # bytes of copies waiting to be written
FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """An upstream metadata answer as sent (its body still in its content coding): fresh from
    the upstream, or read back from disk."""

    raw: bytes
    coding: str | None
    content_type: str | None
    etag: str | None
    last_modified: str | None
    age: float = 0.0  # seconds since the upstream gave or confirmed it (inf when unknown)

    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified)


@dataclass
class DiskStats:
    fresh: int = 0  # answered from disk without the upstream
    revalidated: int = 0  # stored copy confirmed by an upstream 304
    stale: int = 0  # stored copy served because the upstream failed
    written: int = 0
    rejected: int = 0  # files that failed a check and were deleted
    failures: int = 0  # reads or writes the disk refused
    evicted: int = 0


def file_name(url: str, accept: str) -> str:
    return hashlib.sha256(f"{url}\n{accept}".encode()).hexdigest() + SUFFIX


class MetadataDisk:
    """Upstream metadata answers on disk; every method runs its I/O on a worker thread."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        ttl: float,
        stale_max: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.ttl = ttl  # a stored answer younger than this is used without the upstream
        self.stale_max = stale_max  # ... and one up to this old when the upstream fails
        self._clock = clock
        self.stats = DiskStats()
        self._since_scan = 0  # bytes this process wrote since it last listed the directory
        self._tmp_names = itertools.count()
        self._failing = False
        self.bytes = 0  # the total at the last listing plus what this process wrote since
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="pkgate-metadisk-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pkgate-metadisk-write")
        self._pending: set[asyncio.Future[None]] = set()
        self._pending_bytes = 0
        self._lock = threading.Lock()  # the counters both threads update

    async def start(self) -> None:
        """Create the directory, drop temporary files a crash left, and keep within the bound."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self._start)

    async def settled(self) -> None:
        """Wait for every copy handed to ``save`` so far to be written (or to have failed)."""
        if self._pending:
            await asyncio.wait(set(self._pending))

    async def close(self) -> None:
        """Write what is pending, then stop the tier's threads."""
        await self.settled()
        self._reader.shutdown(wait=False)
        self._writer.shutdown(wait=True)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.root):
            if entry.name.startswith(TMP_PREFIX) and _left_by_dead_process(entry.name):
                _unlink(Path(entry.path))
        self._trim()

    async def load(self, url: str, accept: str, limit: int, held: Held) -> UpstreamAnswer | None:
        """The stored answer for ``url`` and ``accept``, or None (absent, unusable, unreadable,
        or more than ``held``'s budget has room for).  Its bytes are charged to ``held``."""
        found: UpstreamAnswer | None = await self._read(self._load, url, accept, limit, held)
        return found

    def _load(self, url: str, accept: str, limit: int, held: Held) -> UpstreamAnswer | None:
        path = self.root / file_name(url, accept)
        try:
            # Not followed if a link, never waited on if a pipe: only a plain file is read.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._reject(path, "a symbolic link")
            self._failed("read", exc)
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return self._reject(path, "not a plain file")
                if st.st_size > MAX_HEADER + limit:
                    return self._reject(path, "larger than the limit")
                if not held.take(st.st_size):
                    return None  # the upstream answer would not fit either: it says so
                data = fh.read(st.st_size)
        except OSError as exc:
            self._failed("read", exc)
            return None
        head, newline, raw = data.partition(b"\n")
        if not newline or len(head) > MAX_HEADER:
            return self._reject(path, "no header line")
        try:
            header: Any = orjson.loads(head)
        except orjson.JSONDecodeError:
            return self._reject(path, "header is not JSON")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return self._reject(path, "unknown header")
        if header.get("url") != url or header.get("accept") != accept:
            return self._reject(path, "header names another document")
        if header.get("length") != len(raw) or len(raw) > limit:
            return self._reject(path, "body length differs from its header")
        if header.get("sha256") != hashlib.sha256(raw).hexdigest():
            return self._reject(path, "body hash differs from its header")
        coding, content_type, etag, last_modified = (
            header.get(k) for k in ("coding", "content_type", "etag", "last_modified")
        )
        for value in (coding, content_type, etag, last_modified):
            if value is not None and not isinstance(value, str):
                return self._reject(path, "header fields are not text")
        age = self._clock() - st.st_mtime  # a time in the future is not believed
        return UpstreamAnswer(
            raw, coding, content_type, etag, last_modified, age if age >= 0 else float("inf")
        )

    def _reject(self, path: Path, why: str) -> UpstreamAnswer | None:
        """Delete an unusable file; None, as for an absent one."""
        with self._lock:
            self.stats.rejected += 1
        log.warning("metadata disk cache: %s is unusable (%s); deleted", path.name, why)
        _unlink(path)
        return None

    def save(self, url: str, accept: str, answer: UpstreamAnswer) -> None:
        """Keep an upstream 200 answer (replacing any older copy), in the background."""
        raw = answer.raw
        if len(raw) > self.max_bytes // 8:
            return  # one document may not take the room of many
        if self._pending_bytes + len(raw) > MAX_PENDING:
            return  # the disk is not keeping up: this copy is skipped, not queued
        header = orjson.dumps(
            {
                "format": FORMAT,
                "url": url,
                "accept": accept,
                "coding": answer.coding,
                "content_type": answer.content_type,
                "etag": answer.etag,
                "last_modified": answer.last_modified,
                "length": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
        if len(header) > MAX_HEADER:
            return
        tmp = f"{TMP_PREFIX}{os.getpid()}-{next(self._tmp_names)}"
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(
            self._writer, self._write, file_name(url, accept), tmp, header, raw
        )
        self._pending.add(writing)
        self._pending_bytes += len(raw)

        def done(future: asyncio.Future[None]) -> None:
            self._pending.discard(future)
            self._pending_bytes -= len(raw)
            if not future.cancelled() and future.exception() is not None:
                log.error("metadata disk cache: a write failed", exc_info=future.exception())

        writing.add_done_callback(done)

    def _write(self, name: str, tmp: str, header: bytes, raw: bytes) -> None:
        tmp_path = self.root / tmp
        try:
            with tmp_path.open("xb") as fh:
                fh.write(header + b"\n")
                fh.write(raw)
            os.replace(tmp_path, self.root / name)
        except OSError as exc:
            _unlink(tmp_path)
            self._failed("write", exc)
            return
        self._succeeded()
        with self._lock:
            self.stats.written += 1
        size = len(header) + 1 + len(raw)
        self.bytes += size
        self._since_scan += size
        if self._since_scan > self.max_bytes // 8 or self.bytes > self.max_bytes:
            self._trim()

    async def confirm(self, url: str, accept: str) -> None:
        """The upstream confirmed the stored copy (a 304): it is current as of now."""
        await self._read(self._touch, self.root / file_name(url, accept))

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._failed("update", exc)

    async def forget(self, url: str, accept: str) -> None:
        """The upstream no longer has the document (404): drop the copy."""
        await self._read(_unlink, self.root / file_name(url, accept))

    def _trim(self) -> None:
        """List the directory and delete the oldest files until the total fits the bound."""
        files: list[tuple[float, int, str]] = []
        try:
            for entry in os.scandir(self.root):
                if entry.name.endswith(SUFFIX):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime, st.st_size, entry.path))
        except OSError as exc:
            self._failed("list", exc)
            return
        total = sum(size for _, size, _ in files)
        files.sort()
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            _unlink(Path(path))
            total -= size
            self.stats.evicted += 1
        self.bytes = total
        self._since_scan = 0

    def _failed(self, what: str, exc: OSError) -> None:
        with self._lock:
            self.stats.failures += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "metadata disk cache: %s failed (%s); serving from memory and the upstream",
                what,
                errno.errorcode.get(exc.errno or 0, type(exc).__name__),
            )

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("metadata disk cache: writes succeed again")


def _left_by_dead_process(name: str) -> bool:
    pid = name[len(TMP_PREFIX) :].partition("-")[0]
    return not (pid.isdigit() and pid_alive(int(pid)))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("metadata disk cache: cannot delete %s (%s)", path.name, exc)
