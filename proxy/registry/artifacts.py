"""The artifact cache: tarballs, wheels and sdists on disk, kept only once their hash is verified.

How a handler uses it (the cache lives under ``keys.artifact_cache_key``)::

    cache = request.config_dict[artifact_cache_key]
    digest = Digest.from_sri(integrity)              # npm dist.integrity; None if unusable
    digest = Digest.from_hex("sha256", fragment)     # the index's #sha256=...

    def open_upstream(headers: Mapping[str, str]):   # an async context manager per call
        return upstream.request("GET", url, headers=headers, what="artifact")

    return await cache.serve(request, key=str(url), digest=digest,
                             open_upstream=open_upstream, content_type="application/octet-stream")

``serve`` answers GET and HEAD, with Range, and does everything else:
- Answers carry ``X-Cache: HIT`` (from disk) or ``MISS`` (streamed while stored).
- A cached file is answered with ``web.FileResponse`` (sendfile; Range/206/416, HEAD, and
  If-Modified-Since handled by aiohttp).
- On a miss the first request streams upstream bytes to its client while writing a temporary file
  and hashing; the file is renamed into place only when the hash matches ``digest``.  The last chunk
  is held back until then: on a mismatch the client's connection is cut (it sees a short body, never
  a complete wrong one) and nothing is kept.
- Concurrent requests for the same artifact wait for that download and are served from the finished
  file; if it failed they try again themselves (one of them leads the next download).  After a hash
  mismatch they get ``UpstreamError(502)``, never the upstream's bytes.
- What is stored and verified are the bytes as the upstream sent them: a ``Content-Encoding`` it
  adds although asked for ``identity`` is neither undone nor passed on (a host labelling a
  ``.tar.gz`` "gzip" sends the file itself, which then matches; anything else is a mismatch).
- HEAD and Range requests on a miss first fill the cache (no client attached), then use the file.
- Without a usable ``digest``, for artifacts larger than the whole bound, or with the cache off
  (``max_bytes == 0``), bytes are relayed from the upstream without being stored (Range and
  If-Range are then forwarded).
- ``open_upstream`` receives the request headers to send (e.g. ``Accept-Encoding: identity`` and a
  relayed Range); it must raise ``UpstreamError`` for connection problems as ``Upstream.request``
  does.  Upstream status codes are checked here with ``raise_for_upstream_status``.

Files live under ``<data_dir>/cache/artifacts/<2 hex>/<64 hex>``: the name is a SHA-256 of the
handler's key and the expected digest, never derived from a client's path, so nothing can escape
that directory and a file always matches the digest the current metadata publishes.  The byte
bound is enforced with LRU eviction over sizes tracked in memory and rebuilt by scanning the
directory at start.  Several workers share the directory: a file written by one is adopted by the
others on their first lookup, and each evicts by its own view of use.  Disk writes, renames,
deletes and hashing of chunks run in the default executor, off the event loop.
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
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from .upstream import UpstreamError, raise_for_upstream_status

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 256 * 1024
# Most bytes one os.sendfile call may move (it returns early when the socket buffer is full).
SENDFILE_MAX: Final = 16 * 1024 * 1024

# Strongest first: an SRI string may list several hashes; the strongest supported one is used.
SRI_ALGORITHMS: Final = ("sha512", "sha384", "sha256")
HEX_ALGORITHMS: Final = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512", "md5"})

# Response headers worth relaying when bytes are passed through uncached.
_RELAYED = (
    hdrs.CONTENT_LENGTH,
    hdrs.CONTENT_RANGE,
    hdrs.ACCEPT_RANGES,
    hdrs.CONTENT_ENCODING,
    hdrs.LAST_MODIFIED,
    hdrs.ETAG,
)

Opener = Callable[[Mapping[str, str]], AbstractAsyncContextManager[aiohttp.ClientResponse]]


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


class _Outcome(enum.Enum):
    STORED = "stored"
    FAILED = "failed"
    MISMATCH = "mismatch"


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


class HashMismatch(UpstreamError):
    """The upstream's bytes did not match the hash the metadata published."""

    def __init__(self) -> None:
        super().__init__(502, "upstream artifact does not match the hash its metadata published")


def _absorb(fh: IO[bytes], hasher: Any, chunk: bytes) -> None:
    fh.write(chunk)
    hasher.update(chunk)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArtifactCache:
    """Verified artifacts on disk with a byte bound, LRU eviction and shared downloads."""

    def __init__(self, root: Path, max_bytes: int, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self._tmp = root / "tmp"
        self._index: OrderedDict[str, int] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Outcome]] = {}
        self.bytes = 0
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
            if not (pid.isdigit() and _pid_alive(int(pid))):
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
        """The file name for ``key`` verified against ``digest``: 64 hex characters."""
        return hashlib.sha256(f"{key}\0{digest}".encode()).hexdigest()

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def lookup(self, key: str, digest: Digest) -> Path | None:
        """The cached file for ``key`` and ``digest``, marking it used; None on a miss."""
        if not self.enabled:
            return None
        name = self.name_for(key, digest)
        return self._lookup_name(name)

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

    async def serve(
        self,
        request: web.BaseRequest,
        *,
        key: str,
        digest: Digest | None,
        open_upstream: Opener,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Answer ``request`` with the artifact, from disk or from the upstream (see module doc)."""
        if not self.enabled or digest is None:
            return await self._relay(request, open_upstream, content_type, headers)
        name = self.name_for(key, digest)
        for _ in range(3):
            path = self._lookup_name(name)
            if path is not None:
                self.stats.hits += 1
                return self._file_response(path, content_type, headers)
            pending = self._inflight.get(name)
            if pending is not None:
                self.stats.coalesced += 1
                outcome = await asyncio.shield(pending)
                if outcome is _Outcome.MISMATCH:
                    raise HashMismatch()
                continue
            if request.method == hdrs.METH_HEAD or hdrs.RANGE in request.headers:
                outcome = await self._fill(name, digest, open_upstream)
                if outcome is _Outcome.MISMATCH:
                    raise HashMismatch()
                continue
            return await self._lead(request, name, digest, open_upstream, content_type, headers)
        # Downloads keep failing for others; give this client its own attempt.
        return await self._relay(request, open_upstream, content_type, headers)

    def _file_response(
        self, path: Path, content_type: str, headers: Mapping[str, str] | None
    ) -> web.FileResponse:
        resp = SendfileResponse(path, chunk_size=self.chunk_size, headers=headers)
        resp.content_type = content_type
        resp.headers["X-Cache"] = "HIT"
        return resp

    def _begin(self, name: str) -> asyncio.Future[_Outcome]:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        return future

    def _end(self, name: str, future: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
        if self._inflight.get(name) is future:
            del self._inflight[name]
        if not future.done():
            future.set_result(outcome)

    async def _fill(self, name: str, digest: Digest, open_upstream: Opener) -> _Outcome:
        """Download into the cache with no client attached (for HEAD and Range misses)."""
        future = self._begin(name)

        async def download() -> _Outcome:
            outcome = _Outcome.FAILED
            try:
                async with open_upstream({hdrs.ACCEPT_ENCODING: "identity"}) as up:
                    raise_for_upstream_status(up, "artifact upstream")
                    self.stats.downloads += 1
                    outcome = await self._store(up, name, digest, None, None)
                    return outcome
            finally:
                self._end(name, future, outcome)

        # A task of its own: the requester going away must not abort the others' download.
        task = asyncio.get_running_loop().create_task(download())
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
        return await asyncio.shield(task)

    async def _lead(
        self,
        request: web.BaseRequest,
        name: str,
        digest: Digest,
        open_upstream: Opener,
        content_type: str,
        headers: Mapping[str, str] | None,
    ) -> web.StreamResponse:
        future = self._begin(name)
        outcome = _Outcome.FAILED
        resp: web.StreamResponse | None = None
        try:
            async with open_upstream({hdrs.ACCEPT_ENCODING: "identity"}) as up:
                raise_for_upstream_status(up, "artifact upstream")
                self.stats.downloads += 1
                length = up.content_length
                resp = web.StreamResponse(headers=headers)
                resp.content_type = content_type
                resp.headers["X-Cache"] = "MISS"
                if length is not None:
                    resp.content_length = length
                if length is not None and length > self.max_bytes:
                    # Not storable; pass it on untouched.
                    self.stats.relayed += 1
                    _copy_headers(up, resp, (hdrs.CONTENT_ENCODING,))
                    await resp.prepare(request)
                    await self._copy(up, resp)
                    await resp.write_eof()
                    return resp
                await resp.prepare(request)
                outcome = await self._store(up, name, digest, request, resp)
                return resp
        except UpstreamError as exc:
            return _cut_short(request, resp, exc)
        finally:
            self._end(name, future, outcome)

    async def _store(
        self,
        up: aiohttp.ClientResponse,
        name: str,
        digest: Digest,
        request: web.BaseRequest | None,
        resp: web.StreamResponse | None,
    ) -> _Outcome:
        """Write the body to a temp file (and to ``resp``), keep it only if the hash matches."""
        loop = asyncio.get_running_loop()
        tmp = self._tmp / f"{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        fh = await asyncio.to_thread(tmp.open, "xb")
        hasher = digest.hasher()
        size = 0
        held: bytes | None = None
        try:
            async for chunk in up.content.iter_chunked(self.chunk_size):
                written = loop.run_in_executor(None, _absorb, fh, hasher, chunk)
                try:
                    if resp is not None and held is not None:
                        await resp.write(held)
                finally:
                    await written
                held = chunk
                size += len(chunk)
            await asyncio.to_thread(fh.close)
            if not digest.matches(hasher.digest()):
                self.stats.mismatches += 1
                log.warning("artifact %s did not match its published %s", name, digest.algorithm)
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
                if request is not None and request.transport is not None:
                    # The client must not get a complete wrong body: cut the connection short.
                    request.transport.abort()
                return _Outcome.MISMATCH
            path = self._path(name)
            await asyncio.to_thread(_install, tmp, path)
        except BaseException:
            fh.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        self._add(name, size)
        self.stats.stored += 1
        await self._evict()
        if resp is not None:
            if held is not None:
                await resp.write(held)
            await resp.write_eof()
        return _Outcome.STORED

    def _add(self, name: str, size: int) -> None:
        old = self._index.pop(name, None)
        if old is not None:
            self.bytes -= old
        self._index[name] = size
        self.bytes += size

    def _victims(self) -> list[Path]:
        victims = []
        while self.bytes > self.max_bytes and self._index:
            name, size = self._index.popitem(last=False)
            self.bytes -= size
            self.stats.evictions += 1
            victims.append(self._path(name))
        return victims

    def _evict_sync(self) -> None:
        for path in self._victims():
            path.unlink(missing_ok=True)

    async def _evict(self) -> None:
        victims = self._victims()
        if victims:
            await asyncio.to_thread(_unlink_all, victims)

    async def _relay(
        self,
        request: web.BaseRequest,
        open_upstream: Opener,
        content_type: str,
        headers: Mapping[str, str] | None,
    ) -> web.StreamResponse:
        """Pass the upstream's bytes through without storing them (Range forwarded)."""
        forwarded: dict[str, str] = {hdrs.ACCEPT_ENCODING: "identity"}
        for name in (hdrs.RANGE, hdrs.IF_RANGE):
            value = request.headers.get(name)
            if value is not None:
                forwarded[name] = value
        resp: web.StreamResponse | None = None
        try:
            async with open_upstream(forwarded) as up:
                if up.status == 416 and hdrs.RANGE in forwarded:
                    # A range past the end is the client's mistake, not an upstream failure.
                    return _unsatisfiable(up.headers.get(hdrs.CONTENT_RANGE))
                raise_for_upstream_status(up, "artifact upstream")
                self.stats.relayed += 1
                resp = web.StreamResponse(status=up.status, headers=headers)
                _copy_headers(up, resp, _RELAYED)
                resp.content_type = content_type
                await resp.prepare(request)
                if request.method != hdrs.METH_HEAD:
                    await self._copy(up, resp)
                await resp.write_eof()
        except UpstreamError as exc:
            return _cut_short(request, resp, exc)
        return resp

    async def _copy(self, up: aiohttp.ClientResponse, resp: web.StreamResponse) -> None:
        async for chunk in up.content.iter_chunked(self.chunk_size):
            await resp.write(chunk)


def _unsatisfiable(content_range: str | None) -> web.Response:
    headers = {hdrs.CONTENT_RANGE: content_range} if content_range else None
    return web.json_response(
        {"error": "Requested range not satisfiable"}, status=416, headers=headers
    )


def _copy_headers(
    up: aiohttp.ClientResponse, resp: web.StreamResponse, names: tuple[str, ...]
) -> None:
    for name in names:
        value = up.headers.get(name)
        if value is not None:
            resp.headers[name] = value


class SendfileResponse(web.FileResponse):
    """A FileResponse that uses ``os.sendfile`` even where the event loop has no sendfile.

    uvloop (which ``pkgate serve`` runs on) does not implement ``loop.sendfile``, so aiohttp
    falls back to reading chunks in threads and writing them: a fraction of the throughput and a
    buffer per download.  On a plain TCP transport this writes the file straight from the page
    cache to the socket instead, waiting for writability itself; anything else (TLS, no socket)
    keeps aiohttp's own path.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Send the file once: a handler that already sent it (to know it completed) is done.

        aiohttp calls ``prepare`` again on the response a handler returns; for a FileResponse
        that would open and send the file a second time on a finished answer.
        """
        if self.prepared:
            return self._payload_writer
        return await super().prepare(request)

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (
            transport is None
            or sock is None
            or transport.get_extra_info("sslcontext") is not None
            or self.compression
            or not hasattr(os, "sendfile")
        ):
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        writer.send_headers()
        await _sendfile_to(transport, sock.fileno(), fobj.fileno(), offset, count)
        await web.StreamResponse.write_eof(self)
        return writer


async def _sendfile_to(
    transport: asyncio.BaseTransport, sock_fd: int, file_fd: int, offset: int, count: int
) -> None:
    loop = asyncio.get_running_loop()
    # uvloop refuses add_writer on a descriptor its transport owns: watch a duplicate instead.
    fd = os.dup(sock_fd)
    try:
        while count > 0 or _buffered(transport):
            if _buffered(transport) or transport.is_closing():
                if transport.is_closing():
                    raise ConnectionResetError("client went away")
                # The headers are still in the transport's buffer: they go first.
                await _writable(loop, fd)
                continue
            try:
                sent = os.sendfile(fd, file_fd, offset, min(count, SENDFILE_MAX))
            except BlockingIOError:
                await _writable(loop, fd)
                continue
            except (BrokenPipeError, ConnectionError) as exc:
                raise ConnectionResetError("client went away") from exc
            if sent == 0:
                raise ConnectionResetError("file shrank or client went away")
            offset += sent
            count -= sent
    finally:
        os.close(fd)


def _buffered(transport: asyncio.BaseTransport) -> bool:
    size = getattr(transport, "get_write_buffer_size", None)
    return bool(size and size())


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _cut_short(
    request: web.BaseRequest, resp: web.StreamResponse | None, exc: UpstreamError
) -> web.StreamResponse:
    """After the upstream broke off: re-raise while nothing was sent, else cut the client short."""
    if resp is None or not resp.prepared:
        raise exc
    # Headers (and a Content-Length) are gone; the only honest signal left is a short body.
    log.warning("artifact download broke off: %s", exc.message)
    if request.transport is not None:
        request.transport.close()
    return resp


def _install(tmp: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic on one filesystem: readers see no file or the whole verified file.
    os.replace(tmp, path)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


__all__ = ["ArtifactCache", "ArtifactStats", "Digest", "HashMismatch", "Opener"]
