"""Answering artifact requests: the web side of the artifact store.

``deliver`` answers GET and HEAD, with Range, for one artifact whose expected ``digest`` the
registry found (None when its metadata publishes none):

- **hit**: a verified file on disk, answered with ``SendfileResponse`` (Range/206/416, HEAD,
  conditional requests); a small one asked for with a plain GET is answered from the store's
  memory copy instead (``ArtifactCache.remembered``, ``load_into_memory``), with the same
  headers; ``X-Cache: HIT``.
- **miss, GET**: the upstream's bytes stream to the client while they are hashed and written to a
  temporary file; the last chunk is held back until the hash is checked.  A mismatch cuts the
  connection (the client sees a short body, never a complete wrong one) and nothing is kept.
  ``X-Cache: MISS``.  Concurrent requests for the same artifact wait for that download and are
  served from the finished file; after a mismatch they get 502.  The leader's client leaving
  stops the download (a waiter then leads its own).
- **miss, HEAD or Range**: the artifact is first downloaded into the store with no client attached
  (one upstream GET), then answered from the file.  That download stops when its requester (and
  every other waiter) has gone, and as soon as it turns out not to fit in the bound; the request is
  then relayed as it is (a HEAD upstream stays a HEAD; a Range is forwarded).
- **not storable** (the store is off, the artifact exceeds the bound, the disk fails): the bytes
  are relayed and still **verified while streaming** whenever a digest is known, the last chunk
  held back as above.  A disk error while storing switches to this, never to an error answer.
- **no digest**: relayed byte for byte (Range and If-Range forwarded).  Relayed answers carry
  ``X-Cache: BYPASS``.

What is stored and verified are the bytes as the upstream sent them: a ``Content-Encoding`` it
adds although asked for ``identity`` is neither undone nor passed on (a host labelling a ``.tar.gz``
"gzip" sends the file itself, which then matches; anything else is a mismatch).

Once a response has started, no failure ever becomes a second response: the connection is cut.
A complete 200 body sets ``ARTIFACT_SENT`` on the request (its byte count), which the pipeline's
artifact-served hooks read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import hdrs, web

from ..compat import SendfileResponse
from .artifacts import ArtifactCache, Digest, Download, HashMismatch, InMemory, Outcome
from .upstream import UpstreamError, raise_for_upstream_status

log = logging.getLogger(__name__)

# (method, request headers) -> the upstream request, as an async context manager.
Opener = Callable[[str, Mapping[str, str]], AbstractAsyncContextManager[aiohttp.ClientResponse]]

# The body bytes of an artifact answered complete with 200 (set on the request).
ARTIFACT_SENT: Final = web.RequestKey("pkgate_artifact_sent", int)

# Response headers worth relaying when bytes are passed through uncached.
_RELAYED = (
    hdrs.CONTENT_LENGTH,
    hdrs.CONTENT_RANGE,
    hdrs.ACCEPT_RANGES,
    hdrs.CONTENT_ENCODING,
    hdrs.LAST_MODIFIED,
    hdrs.ETAG,
)
# ... and when they are verified (the bytes as sent are the file: no coding is passed on).
_VERIFIED = (hdrs.CONTENT_LENGTH, hdrs.LAST_MODIFIED, hdrs.ETAG)
IDENTITY: Final[Mapping[str, str]] = {str(hdrs.ACCEPT_ENCODING): "identity"}
WHAT: Final = "artifact upstream"
# How often a download with no client attached checks whether its requester is still there.
ABANDONED_CHECK: Final = 0.5


async def deliver(
    request: web.BaseRequest,
    store: ArtifactCache,
    *,
    key: str,
    digest: Digest | None,
    open_upstream: Opener,
    content_type: str,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with the artifact (see the module documentation); ``name`` is its
    file name in the store, when the caller has it (``ArtifactCache.name_for``)."""
    partial = request.method == hdrs.METH_HEAD or hdrs.RANGE in request.headers
    if digest is None or not store.enabled:
        return await relay(request, store, open_upstream, content_type, headers, digest)
    if name is None:
        name = store.name_for(key, digest)
    headers_in = request.headers
    # Conditional requests are answered from the file, whose validators aiohttp checks.
    plain = not partial and not (
        hdrs.IF_NONE_MATCH in headers_in
        or hdrs.IF_MODIFIED_SINCE in headers_in
        or hdrs.IF_MATCH in headers_in
        or hdrs.IF_RANGE in headers_in
    )
    if plain:
        kept = store.remembered(name)
        if kept is not None:
            return await _sent(request, from_memory(store, kept, content_type, headers))
    path = store.lookup_name(name)
    if path is not None:
        if plain:
            kept = await store.load_into_memory(name, digest)
            if kept is not None:
                return await _sent(request, from_memory(store, kept, content_type, headers))
            path = store.lookup_name(name)  # gone if it no longer matched
        if path is not None:
            return await from_disk(request, store, path, content_type, headers)
    pending = store.inflight(name)
    if pending is not None:
        store.stats.coalesced += 1
        outcome = await wait_for(pending)
        path = store.lookup_name(name)
        if path is not None:
            return await from_disk(request, store, path, content_type, headers)
        if outcome is Outcome.MISMATCH:
            raise HashMismatch()
        if outcome is Outcome.NOT_KEPT:
            return await relay(request, store, open_upstream, content_type, headers, digest)
        # FAILED (the leader's client left, or the upstream broke off): try once ourselves.
    if partial:
        outcome = await fill(request, store, store.begin(name, digest), open_upstream)
        path = store.lookup_name(name)
        if path is not None:
            return await from_disk(request, store, path, content_type, headers)
        if outcome is Outcome.MISMATCH:
            raise HashMismatch()
        if outcome is Outcome.FAILED:
            raise UpstreamError(502, f"{WHAT} download failed")
        return await relay(request, store, open_upstream, content_type, headers, digest)
    return await lead(
        request, store, store.begin(name, digest), open_upstream, content_type, headers
    )


async def wait_for(download: Download) -> Outcome:
    """Wait for another request's download; leaving does not cancel it for the others."""
    download.waiters += 1
    try:
        return await asyncio.shield(download.future)
    finally:
        download.waiters -= 1


async def from_disk(
    request: web.BaseRequest,
    store: ArtifactCache,
    path: Path,
    content_type: str,
    headers: Mapping[str, str] | None,
) -> web.StreamResponse:
    """A verified file from the store, sent here so that its completion is known."""
    store.stats.hits += 1
    resp = SendfileResponse(path, chunk_size=store.chunk_size, headers=headers)
    resp.content_type = content_type
    resp.headers["X-Cache"] = "HIT"
    return await _sent(request, resp)


def from_memory(
    store: ArtifactCache, kept: InMemory, content_type: str, headers: Mapping[str, str] | None
) -> web.Response:
    """A small verified file from memory: the answer ``from_disk`` would give a plain GET, to be
    sent (``_sent``).  The warm path of most tarballs: the copy's headers are made once
    (``InMemory.headers``)."""
    merged = {**headers, **kept.headers} if headers else {**kept.headers}
    merged[hdrs.CONTENT_TYPE] = content_type
    store.stats.hits += 1
    return web.Response(body=kept.body, headers=merged)


async def _sent(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """``resp`` sent, and ``ARTIFACT_SENT`` set when its whole 200 body went out."""
    await resp.prepare(request)
    await resp.write_eof()
    length = resp.content_length
    complete = resp.status == 200 and request.method == hdrs.METH_GET and not _gone(request)
    if complete and length is not None:
        request[ARTIFACT_SENT] = length
    return resp


async def fill(
    request: web.BaseRequest, store: ArtifactCache, download: Download, open_upstream: Opener
) -> Outcome:
    """Download into the store with no client attached (for HEAD and Range misses).

    Runs in a task of its own, stopped when the requester has left and nobody else waits (the
    server does not cancel handlers whose client left, so the connection is watched here).
    """

    async def run() -> Outcome:
        try:
            async with open_upstream(hdrs.METH_GET, IDENTITY) as up:
                raise_for_upstream_status(up, WHAT)
                store.stats.downloads += 1
                await download.open(up.content_length)
                async for chunk in up.content.iter_chunked(store.chunk_size):
                    if not download.keeping:
                        break
                    await download.write(chunk)
                if not download.keeping:
                    return await download.drop(Outcome.NOT_KEPT)
                return await download.finish()
        finally:
            if not download.future.done():
                await download.abandon()

    task = asyncio.get_running_loop().create_task(run())
    task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=ABANDONED_CHECK)
            if done:
                return task.result()
            if _gone(request) and download.waiters == 0:
                task.cancel()  # nobody is left to use it
                await asyncio.wait({task})
                raise ConnectionResetError("client went away during the download")
    except asyncio.CancelledError:
        if download.waiters == 0:
            task.cancel()
        raise


async def lead(
    request: web.BaseRequest,
    store: ArtifactCache,
    download: Download,
    open_upstream: Opener,
    content_type: str,
    headers: Mapping[str, str] | None,
) -> web.StreamResponse:
    """Stream the upstream's bytes to the client while storing and verifying them."""
    resp: web.StreamResponse | None = None
    try:
        async with open_upstream(hdrs.METH_GET, IDENTITY) as up:
            raise_for_upstream_status(up, WHAT)
            store.stats.downloads += 1
            length = up.content_length
            await download.open(length)
            if not download.keeping:
                store.stats.relayed += 1
            resp = web.StreamResponse(headers=headers)
            resp.content_type = content_type
            resp.headers["X-Cache"] = "MISS"
            if length is not None:
                resp.content_length = length
            await resp.prepare(request)
            held: bytes | None = None
            async for chunk in up.content.iter_chunked(store.chunk_size):
                written = asyncio.ensure_future(download.write(chunk))
                try:
                    if held is not None:
                        await resp.write(held)
                finally:
                    await written
                held = chunk
        outcome = await download.finish()
    except UpstreamError as exc:
        await download.abandon()
        return cut_short(request, resp, exc)
    except BaseException:
        await download.abandon()
        if resp is not None and resp.prepared:
            _abort(request)
        raise
    if outcome is Outcome.MISMATCH:
        # The client must not get a complete wrong body: cut the connection short.
        _abort(request)
        return resp
    return await _complete(request, resp, held, download.size)


async def relay(
    request: web.BaseRequest,
    store: ArtifactCache,
    open_upstream: Opener,
    content_type: str,
    headers: Mapping[str, str] | None,
    digest: Digest | None,
) -> web.StreamResponse:
    """Pass the upstream's bytes through without storing them, verifying a whole GET's."""
    method = hdrs.METH_HEAD if request.method == hdrs.METH_HEAD else hdrs.METH_GET
    ranged = hdrs.RANGE in request.headers
    verify = digest is not None and method == hdrs.METH_GET and not ranged
    forwarded: dict[str, str] = {**IDENTITY}
    for name in (hdrs.RANGE, hdrs.IF_RANGE):
        value = request.headers.get(name)
        if value is not None:
            forwarded[name] = value
    resp: web.StreamResponse | None = None
    held: bytes | None = None
    size = 0
    try:
        async with open_upstream(method, forwarded) as up:
            if up.status == 416 and ranged:
                # A range past the end is the client's mistake, not an upstream failure.
                return _unsatisfiable(up.headers.get(hdrs.CONTENT_RANGE))
            raise_for_upstream_status(up, WHAT)
            store.stats.relayed += 1
            resp = web.StreamResponse(status=up.status, headers=headers)
            _copy_headers(up, resp, _VERIFIED if verify else _RELAYED)
            resp.content_type = content_type
            resp.headers["X-Cache"] = "BYPASS"
            await resp.prepare(request)
            if method == hdrs.METH_HEAD:
                await resp.write_eof()
                return resp
            hasher = digest.hasher() if verify and digest is not None else None
            loop = asyncio.get_running_loop()
            async for chunk in up.content.iter_chunked(store.chunk_size):
                if hasher is None:
                    await resp.write(chunk)
                    size += len(chunk)
                    continue
                hashed = loop.run_in_executor(None, hasher.update, chunk)
                try:
                    if held is not None:
                        await resp.write(held)
                finally:
                    await hashed
                held = chunk
                size += len(chunk)
            if hasher is not None and digest is not None and not digest.matches(hasher.digest()):
                store.stats.mismatches += 1
                log.warning("relayed artifact did not match its published %s", digest.algorithm)
                _abort(request)
                return resp
    except UpstreamError as exc:
        return cut_short(request, resp, exc)
    except BaseException:
        if resp is not None and resp.prepared:
            _abort(request)
        raise
    assert resp is not None
    return await _complete(request, resp, held, size)


async def _complete(
    request: web.BaseRequest, resp: web.StreamResponse | None, held: bytes | None, size: int
) -> web.StreamResponse:
    assert resp is not None
    if held is not None:
        await resp.write(held)
    await resp.write_eof()
    if resp.status == 200 and request.method == hdrs.METH_GET and not _gone(request):
        request[ARTIFACT_SENT] = size
    return resp


def _gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()


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


def cut_short(
    request: web.BaseRequest, resp: web.StreamResponse | None, exc: UpstreamError
) -> web.StreamResponse:
    """After the upstream broke off: re-raise while nothing was sent, else cut the client short."""
    if resp is None or not resp.prepared:
        raise exc
    # Headers (and a Content-Length) are gone; the only honest signal left is a short body.
    log.warning("artifact download broke off: %s", exc.message)
    _abort(request)
    return resp


__all__ = ["ARTIFACT_SENT", "Opener", "deliver"]
