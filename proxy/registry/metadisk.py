"""The metadata cache's second tier: upstream metadata answers kept on disk under ``data_dir``.

A restarted pkgate, or another worker on the same ``data_dir``, finds there what the upstream last
sent for a document: younger than ``metadata_ttl`` it is used without asking the upstream at all
(``X-Cache: DISK``); older, it is revalidated with the validators it came with, so an unchanged
document costs the upstream a 304 and no body (``X-Cache: REVALIDATED``); while the upstream
fails, a copy up to ``metadata_stale_max`` old is served as ``STALE``, as the memory tier does.
The bytes kept are the upstream's as received, content coding included.  Beside them a file may
keep the entry pkgate built from them (``Built``: the rewritten body as the memory tier stores
it, gzipped, and a table of what the entry knows besides, such as a packument's file hashes), so
that a restarted pkgate answers at once instead of parsing and rewriting every document again.
A built copy is used only by a build of the same ``kind`` (the registry's builder, its format
version and what it depends on, such as the public URL written into the body); otherwise the
upstream's bytes go through the same bounded decoding, the same rewrite and the same policy as a
fresh answer.  Policy decisions are never kept: they are made on every answer.

One file per (URL, Accept) under ``cache/metadata/``, named by their SHA-256: a header line of
JSON (URL, Accept, content type and coding, validators, body length and SHA-256, and for a built
copy its kind, lengths and MAC), then the upstream's body, then the built copy's table and body.
The disk is not trusted either: a file is used only when its header parses, names the same URL
and Accept, and its body has the stated length (within the caller's limit) and hash; anything
else is deleted and counts as absent.  A built copy must also carry the HMAC-SHA256 of its
kind, coding, length, table and body under the tier's own key (``KEY_FILE``, 32 random bytes
made at the first start, mode 0600): only a pkgate with this data directory's key wrote it.  A
copy made under another key (the key file was lost) is ignored and its upstream bytes are built
again; a MAC that fails under this key means damage, and the whole file is deleted.  The caller
checks the rest before using it (``pipeline``: that the body inflates to its stated length,
within the limit; the registry: that every table field has its type).  Files are written to a
temporary name and renamed into place, so a reader sees the old copy or the new one, never half
of one.  A file's modification time is when the upstream last gave or confirmed it.

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
import hmac
import itertools
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

import orjson

from .artifacts import pid_alive
from .decode import Held
from .metacache import Validators

log = logging.getLogger(__name__)

SUFFIX: Final = ".meta"
TMP_PREFIX: Final = "tmp-"
MAX_HEADER: Final = 16 * 1024
MAX_PENDING: Final = 64 * 1024 * 1024  # bytes of copies waiting to be written
FORMAT: Final = 2
FORMATS: Final = (1, 2)  # format 1: the upstream's bytes only
KEY_FILE: Final = "built.key"
KEY_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Built:
    """An entry pkgate built, as kept beside the upstream answer it was built from: what the
    registry's builder needs to make the entry again without the upstream's bytes."""

    kind: str  # which builder, its format version and its parameters
    table: bytes  # JSON: what the entry knows besides its body (the registry's own layout)
    stored: bytes  # the body as the memory tier stores it (gzip bytes when ``coding`` is gzip)
    coding: str | None
    length: int  # length of the identity body


# Makes the ``Built`` copy of an entry; run on the tier's writer thread, off the event loop.
Dump = Callable[[], Built | None]


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
    built: Built | None = None  # read back from disk: the entry built from it, when kept

    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified)


@dataclass
class DiskStats:
    fresh: int = 0  # answered from disk without the upstream
    revalidated: int = 0  # stored copy confirmed by an upstream 304
    stale: int = 0  # stored copy served because the upstream failed
    written: int = 0
    rejected: int = 0  # files that failed a check and were deleted
    restored: int = 0  # entries made from a built copy (no parse, no rewrite)
    rebuilt: int = 0  # entries built again from the upstream's bytes (no usable built copy)
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
        self._key = b""  # the key of built copies' MACs (read or made by ``start``)
        self._key_id = ""

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
        self._key = self._read_or_make_key()
        self._key_id = hashlib.sha256(self._key).hexdigest()[:16]
        self._trim()

    def _read_or_make_key(self) -> bytes:
        """The tier's MAC key: read from ``KEY_FILE``, or made there (each worker sharing the
        directory ends up with the one that was linked into place first)."""
        path = self.root / KEY_FILE
        for _ in range(3):
            key = _read_key(path)
            if key is not None:
                return key
            tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-key"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                # Another worker's key, or an unusable file: a damaged one is replaced.
                if _read_key(path) is None:
                    os.replace(tmp, path)
            finally:
                _unlink(tmp)
        raise OSError(errno.EIO, f"cannot keep a key in {path}")

    def _mac(self, *parts: bytes) -> str:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest()

    async def load(
        self, url: str, accept: str, limit: int, held: Held, kind: str | None = None
    ) -> UpstreamAnswer | None:
        """The stored answer for ``url`` and ``accept``, or None (absent, unusable, unreadable,
        or more than ``held``'s budget has room for).  Its bytes are charged to ``held``.

        With the built copy of ``kind`` kept beside it, the answer carries that copy (``built``)
        and its upstream bytes are not hashed: they are used only to build an entry again, and
        a copy of any other kind means they are checked.
        """
        found: UpstreamAnswer | None = await self._read(self._load, url, accept, limit, held, kind)
        return found

    def _load(
        self, url: str, accept: str, limit: int, held: Held, kind: str | None
    ) -> UpstreamAnswer | None:
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
        if not isinstance(header, dict) or header.get("format") not in FORMATS:
            return self._reject(path, "unknown header")
        if header.get("url") != url or header.get("accept") != accept:
            return self._reject(path, "header names another document")
        length = header.get("length")
        if type(length) is not int or not 0 <= length <= len(raw) or length > limit:
            return self._reject(path, "body length differs from its header")
        raw, rest = raw[:length], raw[length:]
        built: Built | None = None
        if header.get("format") == 1 or header.get("built") is None:
            if rest:
                return self._reject(path, "body length differs from its header")
        else:
            checked = self._built(header["built"], rest, limit)
            if isinstance(checked, str):
                return self._reject(path, checked)
            built = checked if checked is not None and checked.kind == kind else None
        if built is None and header.get("sha256") != hashlib.sha256(raw).hexdigest():
            return self._reject(path, "body hash differs from its header")
        coding, content_type, etag, last_modified = (
            header.get(k) for k in ("coding", "content_type", "etag", "last_modified")
        )
        for value in (coding, content_type, etag, last_modified):
            if value is not None and not isinstance(value, str):
                return self._reject(path, "header fields are not text")
        age = self._clock() - st.st_mtime  # a time in the future is not believed
        return UpstreamAnswer(
            raw,
            coding,
            content_type,
            etag,
            last_modified,
            age if age >= 0 else float("inf"),
            built,
        )

    def _built(self, fields: Any, data: bytes, limit: int) -> Built | str | None:
        """The built copy a header describes (its bytes: ``data``), None when it was made under
        another key, or why the file is unusable."""
        if not isinstance(fields, dict):
            return "unknown header"
        kind, key_id, mac = fields.get("kind"), fields.get("key"), fields.get("mac")
        table, body, length = fields.get("table"), fields.get("body"), fields.get("length")
        coding = fields.get("coding")
        if not (isinstance(kind, str) and isinstance(key_id, str) and isinstance(mac, str)):
            return "unknown header"
        if coding not in (None, "gzip"):
            return "unknown header"
        if not (_count(table) and _count(body) and _count(length)):
            return "unknown header"
        if table + body != len(data) or body > limit or length > limit:
            return "built copy's length differs from its header"
        if key_id != self._key_id:
            return None  # made under another key: its upstream bytes are still good
        if not hmac.compare_digest(mac, self._mac(_signed(kind, coding, length), data)):
            return "built copy's MAC differs from its header"
        return Built(kind, data[:table], data[table:], coding, length)

    def _reject(self, path: Path, why: str) -> UpstreamAnswer | None:
        """Delete an unusable file; None, as for an absent one."""
        with self._lock:
            self.stats.rejected += 1
        log.warning("metadata disk cache: %s is unusable (%s); deleted", path.name, why)
        _unlink(path)
        return None

    def save(
        self,
        url: str,
        accept: str,
        answer: UpstreamAnswer,
        dump: Dump | None = None,
        *,
        age: float = 0.0,
    ) -> None:
        """Keep an upstream 200 answer (replacing any older copy), in the background; with
        ``dump``, the entry built from it too (``dump`` makes its copy on the writer thread).
        ``age``: how long ago the upstream gave or confirmed the answer (the copy's time)."""
        raw = answer.raw
        if len(raw) > self.max_bytes // 8:
            return  # one document may not take the room of many
        # What the copy may take while it waits (a built body is smaller than the document).
        size = 2 * len(raw) if dump is not None else len(raw)
        if self._pending_bytes + size > MAX_PENDING:
            return  # the disk is not keeping up: this copy is skipped, not queued
        fields = {
            "format": FORMAT,
            "url": url,
            "accept": accept,
            "coding": answer.coding,
            "content_type": answer.content_type,
            "etag": answer.etag,
            "last_modified": answer.last_modified,
            "length": len(raw),
        }
        tmp = f"{TMP_PREFIX}{os.getpid()}-{next(self._tmp_names)}"
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(
            self._writer, self._write, file_name(url, accept), tmp, fields, raw, dump, age
        )
        self._pending.add(writing)
        self._pending_bytes += size

        def done(future: asyncio.Future[None]) -> None:
            self._pending.discard(future)
            self._pending_bytes -= size
            if not future.cancelled() and future.exception() is not None:
                log.error("metadata disk cache: a write failed", exc_info=future.exception())

        writing.add_done_callback(done)

    def _write(
        self,
        name: str,
        tmp: str,
        fields: dict[str, Any],
        raw: bytes,
        dump: Dump | None,
        age: float,
    ) -> None:
        fields["sha256"] = hashlib.sha256(raw).hexdigest()
        built = dump() if dump is not None else None
        tail: tuple[bytes, ...] = ()
        if built is not None:
            tail = (built.table, built.stored)
            fields["built"] = {
                "kind": built.kind,
                "key": self._key_id,
                "mac": self._mac(_signed(built.kind, built.coding, built.length), *tail),
                "table": len(built.table),
                "body": len(built.stored),
                "coding": built.coding,
                "length": built.length,
            }
        header = orjson.dumps(fields)
        if len(header) > MAX_HEADER:
            return
        tmp_path = self.root / tmp
        try:
            with tmp_path.open("xb") as fh:
                fh.write(header + b"\n")
                fh.write(raw)
                for part in tail:
                    fh.write(part)
            if age > 0:
                # An age not known (a time in the future) is kept as long ago as can be.
                when = self._clock() - age if age != float("inf") else 0.0
                os.utime(tmp_path, (when, when))
            os.replace(tmp_path, self.root / name)
        except OSError as exc:
            _unlink(tmp_path)
            self._failed("write", exc)
            return
        self._succeeded()
        with self._lock:
            self.stats.written += 1
        size = len(header) + 1 + len(raw) + sum(map(len, tail))
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


def _signed(kind: str, coding: str | None, length: int) -> bytes:
    """What a built copy's MAC covers besides its table and body."""
    return f"{kind}\n{coding or ''}\n{length}\n".encode()


def _count(value: Any) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def _read_key(path: Path) -> bytes | None:
    """The key in ``path``: a plain file of exactly ``KEY_BYTES`` bytes, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        key = fh.read(KEY_BYTES + 1)
    return key if len(key) == KEY_BYTES else None


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
