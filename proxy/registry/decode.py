"""Reading and decoding upstream metadata bodies, bounded in size, memory and event-loop time.

One function per step, shared by both registries:

- ``read_body`` reads an upstream answer's bytes as sent, refusing more than ``limit``;
- ``decode_body`` undoes its ``Content-Encoding`` (gzip, deflate in its zlib and raw forms, a
  list of codings, and gzip bytes sent without a label), on a worker thread in bounded steps.

Every byte held by either counts against one process-wide ``Budget`` of bytes in flight (raw plus
decoded, ``MAX_IN_FLIGHT``): a decompression bomb stops at its own ``limit``, and many parallel
ones stop at the budget (an answer of 503) instead of pinning gigabytes.  Failures are raised as a
fresh ``UpstreamError`` only after every large buffer is dropped, so no traceback keeps a
decoded buffer alive.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import aiohttp
from isal import isal_zlib

from .upstream import UpstreamError

# ISA-L's error class (its type stubs declare it as an instance).
_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]

# The largest body accepted, as sent and decoded (the biggest real packuments are tens of MB).
MAX_BODY: Final = 256 * 1024 * 1024
# Bytes of upstream metadata (raw and decoded) all requests together may hold while reading.
MAX_IN_FLIGHT: Final = 512 * 1024 * 1024
# One decoding step: what the inflater may produce per call.
STEP: Final = 1024 * 1024
READ_CHUNK: Final = 64 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
# Bodies smaller than this (as sent) are decoded on the event loop: a thread hop costs more.
ON_LOOP_MAX: Final = 64 * 1024
# ... as long as they decode to no more than this.
ON_LOOP_DECODED_MAX: Final = 1024 * 1024


# glibc's mallopt parameter: allocations at least this large are mapped (and unmapped) on their own.
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = STEP


def return_large_buffers() -> bool:
    """Make glibc give every buffer of a decoding step or more back to the system when freed.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB),
    after which the multi-megabyte buffers of a decoding (its steps, a growing body) come from the
    heap arenas of the worker threads, where freed memory stays resident and fragments: after a
    burst of large bodies the process keeps hundreds of megabytes it no longer uses.  A fixed
    threshold keeps what the budget counts close to what the process holds.  Returns whether the
    C library took the setting (only glibc has it; elsewhere nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class Budget:
    """A count of bytes in flight with a ceiling; safe to use from worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n

    @contextmanager
    def hold(self) -> Iterator[Held]:
        held = Held(self)
        try:
            yield held
        finally:
            held.release()


class Held:
    """Bytes taken from a ``Budget`` by one request, given back together."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.bytes = 0

    def take(self, n: int) -> bool:
        if not self.budget.take(n):
            return False
        self.bytes += n
        return True

    def release(self) -> None:
        if self.bytes:
            self.budget.give(self.bytes)
            self.bytes = 0


IN_FLIGHT: Final = Budget(MAX_IN_FLIGHT)

TOO_LARGE: Final = "decoded body is too large"
BUSY: Final = "pkgate is decoding too much upstream metadata at once; try again shortly"


class _Failure:
    """A decoding failure, returned (not raised) by the worker thread; see the module doc."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


async def read_body(
    resp: aiohttp.ClientResponse, held: Held, what: str, limit: int = MAX_BODY
) -> bytes:
    """The upstream answer's body as sent; 502 beyond ``limit``, 503 beyond the budget."""
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamError(502, f"{what} sent a body that is too large")
    chunks: list[bytes] = []
    size = 0
    failure: _Failure | None = None
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            failure = _Failure(502, f"{what} sent a body that is too large")
            break
        if not held.take(len(chunk)):
            failure = _Failure(503, BUSY)
            break
        chunks.append(chunk)
    if failure is not None:
        chunks.clear()
        raise UpstreamError(failure.status, failure.message)
    return b"".join(chunks)


def codings(content_encoding: str | None, body: bytes) -> list[str]:
    """The codings to undo, outermost first; unlabelled gzip bytes count as gzip."""
    found = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    found = [c for c in found if c != "identity"]
    if not found and body[:2] == GZIP_MAGIC:
        return ["gzip"]
    return list(reversed(found))


def _inflate(data: bytes | bytearray, coding: str, limit: int, held: Held) -> bytearray | _Failure:
    if coding in {"gzip", "x-gzip"}:
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        # "deflate" means zlib-wrapped, but some servers send raw deflate.
        wbits = zlib.MAX_WBITS if data[:1] == b"\x78" else -zlib.MAX_WBITS
        result = _inflate_wbits(data, wbits, coding, limit, held)
        if isinstance(result, _Failure) and wbits > 0 and result.message.startswith("undecodable"):
            return _inflate_wbits(data, -zlib.MAX_WBITS, coding, limit, held)
        return result
    else:
        return _Failure(502, f"unsupported content coding {coding!r}")
    return _inflate_wbits(data, wbits, coding, limit, held)


def _inflate_wbits(
    data: bytes | bytearray, wbits: int, coding: str, limit: int, held: Held
) -> bytearray | _Failure:
    # ISA-L's inflate: zlib's interface, about twice its speed on metadata.
    inflater = isal_zlib.decompressobj(wbits)
    out = bytearray()
    pending: bytes | bytearray = data
    try:
        while True:
            piece = inflater.decompress(pending, STEP)
            if len(out) + len(piece) > limit:
                return _Failure(502, TOO_LARGE)
            if piece and not held.take(len(piece)):
                return _Failure(503, BUSY)
            out += piece
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and not piece):
                break
    except (_ISAL_ERROR, zlib.error):
        return _Failure(502, f"undecodable {coding} body")
    if not inflater.eof:
        # A cut-off stream inflates without complaint to a prefix: never serve or cache that.
        return _Failure(502, f"truncated {coding} body")
    return out


def gzip_length(data: bytes, limit: int) -> int | None:
    """How long ``data`` (one gzip stream, nothing after it) is inflated, without keeping what it
    inflates to; None when that is more than ``limit``, or the stream is corrupt or cut off."""
    inflater = isal_zlib.decompressobj(16 + zlib.MAX_WBITS)
    length = 0
    pending: bytes = data
    try:
        while True:
            length += len(inflater.decompress(pending, STEP))
            if length > limit:
                return None
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
    except (_ISAL_ERROR, zlib.error):
        return None
    if not inflater.eof or inflater.unused_data:
        return None
    return length


def decode_sync(
    raw: bytes, content_encoding: str | None, limit: int, held: Held
) -> bytes | bytearray | _Failure:
    """Undo every coding of ``raw``; a ``_Failure`` instead of raising (see the module doc)."""
    body: bytes | bytearray = raw
    for coding in codings(content_encoding, raw):
        result = _inflate(body, coding, limit, held)
        if isinstance(result, _Failure):
            return result
        body = result
    return body


async def decode_body(
    raw: bytes, content_encoding: str | None, held: Held, what: str, limit: int = MAX_BODY
) -> bytes | bytearray:
    """``raw`` with its content codings undone, off the event loop unless it is small."""
    if not codings(content_encoding, raw):
        return raw
    if len(raw) <= ON_LOOP_MAX:
        # A small body that also decodes small is done here; anything bigger goes to a thread.
        trial = Held(held.budget)
        result = decode_sync(raw, content_encoding, min(limit, ON_LOOP_DECODED_MAX), trial)
        if (
            not isinstance(result, _Failure)
            or limit <= ON_LOOP_DECODED_MAX
            or not _too_large(result)
        ):
            held.bytes += trial.bytes
            return _unwrap(result, what)
        del result
        trial.release()
    result = await asyncio.to_thread(decode_sync, raw, content_encoding, limit, held)
    return _unwrap(result, what)


def _too_large(failure: _Failure) -> bool:
    return failure.message == TOO_LARGE


def _unwrap(result: bytes | bytearray | _Failure, what: str) -> bytes | bytearray:
    if isinstance(result, _Failure):
        status, message = result.status, result.message
        del result
        raise UpstreamError(status, f"{what} sent an unusable body ({message})")
    return result


def decode_small(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Decode a small body on the calling thread (request bodies); ValueError when unusable."""
    with IN_FLIGHT.hold() as held:
        result = decode_sync(body, content_encoding, limit, held)
    if isinstance(result, _Failure):
        raise ValueError(result.message)
    return bytes(result)


__all__ = [
    "IN_FLIGHT",
    "MAX_BODY",
    "Budget",
    "Held",
    "codings",
    "decode_body",
    "decode_small",
    "gzip_length",
    "read_body",
]
