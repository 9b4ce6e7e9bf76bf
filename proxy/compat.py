"""Every use of aiohttp's private API, in one place (``tests/test_compat.py`` pins each of them).

aiohttp gives no public way to do these five things; each function names what it relies on, and
the test fails loudly (naming the attribute) when an aiohttp upgrade moves any of it:

- ``name_the_server``: ``web_response.SERVER_SOFTWARE``, the ``Server`` header every answer
  gets unless it sets its own (a signal handler per answer would cost a coroutine each);
- ``add_domain_subapp``: ``Application._add_subapp`` with a custom host rule (``add_domain``
  takes only a host name, and our rule must yield to the main app's routes);
- ``SafeServer`` / ``SafeAppRunner``: ``Server._kwargs``, ``Server._loop`` and
  ``AppRunner._make_server``, to make connections with our own ``RequestHandler`` subclass;
- ``SendfileResponse``: ``FileResponse._sendfile``, to use ``os.sendfile`` on uvloop (whose loop
  has no ``sendfile``), counting the bytes it sends into the response's body length, and
  ``StreamResponse._payload_writer`` so that a response the handler already sent is not sent
  again when aiohttp prepares it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import IO, Any, Final, Protocol, cast

import aiohttp
from aiohttp import web, web_response
from aiohttp.abc import AbstractStreamWriter
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import Domain, MatchedSubAppResource

# Most bytes one os.sendfile call may move (it returns early when the socket buffer is full).
SENDFILE_MAX: Final = 16 * 1024 * 1024

# What each function below relies on: (object, attribute).  The compatibility test checks them.
PRIVATE_API: Final = (
    (web_response, "SERVER_SOFTWARE"),
    (web.Application, "_add_subapp"),
    (web.Server, "_kwargs"),
    (web.Server, "_loop"),
    (web.AppRunner, "_make_server"),
    (web.FileResponse, "_sendfile"),
    (web.StreamResponse, "_payload_writer"),
)
AIOHTTP_VERSION: Final = aiohttp.__version__


def name_the_server(name: str) -> None:
    """Make ``name`` the ``Server`` header of every answer of every aiohttp server in this
    process (aiohttp's default names aiohttp and the Python version)."""
    web_response.SERVER_SOFTWARE = name  # type: ignore[attr-defined]


def add_domain_subapp(
    app: web.Application, rule: Domain, subapp: web.Application
) -> web.AbstractResource:
    """``Application.add_domain`` with our own ``Domain`` rule instead of a plain host name."""
    resource: web.AbstractResource = app._add_subapp(
        partial(MatchedSubAppResource, rule, subapp), subapp
    )
    return resource


class SafeServer(web.Server):
    """An aiohttp low-level server making connections of a ``RequestHandler`` subclass."""

    handler_class: type[RequestHandler] = RequestHandler

    def __call__(self) -> RequestHandler:
        # _kwargs are the per-connection options (debug, access log, keep-alive) Server keeps.
        return self.handler_class(self, loop=self._loop, **self._kwargs)


class FrontStep(Protocol):
    """An app's first step, which its server puts around the app's own handler: given that
    handler, the one the server calls for every request (``proxy.metrics.front``)."""

    def __call__(self, handler: Handler, /) -> Handler: ...


front_key: Final = web.AppKey("front", FrontStep)


def server_with_handler(
    plain: web.Server,
    handler_class: type[RequestHandler],
    front: FrontStep | None = None,
) -> web.Server:
    """A copy of the server ``AppRunner`` made, whose connections are ``handler_class`` and
    whose requests go through ``front`` (around the app's handler) when given."""
    handler = plain.request_handler
    if front is not None:
        # The app's handler takes the web.Request objects the server's request factory makes.
        handler = cast(Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], front(handler))
    server = SafeServer(
        handler,
        request_factory=plain.request_factory,
        handler_cancellation=plain.handler_cancellation,
        loop=asyncio.get_running_loop(),
        **plain._kwargs,
    )
    server.handler_class = handler_class
    return server


class HandlerAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``handler_class`` (set by a subclass) and whose
    requests go through the app's front step (``front_key``), when it has one."""

    handler_class: type[RequestHandler] = RequestHandler

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return server_with_handler(plain, self.handler_class, self.app.get(front_key))


class SendfileResponse(web.FileResponse):
    """A FileResponse that uses ``os.sendfile`` even where the event loop has no sendfile.

    uvloop (which ``pkgate serve`` runs on) does not implement ``loop.sendfile``, so aiohttp
    falls back to reading chunks in threads and writing them: a fraction of the throughput and a
    buffer per download.  On a plain TCP transport this writes the file straight from the page
    cache to the socket instead, waiting for writability itself, and adds the bytes sent to the
    writer's count (the access log's ``bytes``); anything else (TLS, no socket) keeps aiohttp's
    own path.
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
        sent = await _sendfile_to(transport, sock.fileno(), fobj.fileno(), offset, count)
        writer.output_size += sent
        writer.buffer_size += sent
        await web.StreamResponse.write_eof(self)
        return writer


async def _sendfile_to(
    transport: asyncio.BaseTransport, sock_fd: int, file_fd: int, offset: int, count: int
) -> int:
    loop = asyncio.get_running_loop()
    total = 0
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
            total += sent
    finally:
        os.close(fd)
    return total


def _buffered(transport: asyncio.BaseTransport) -> bool:
    size: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
    return bool(size and size())


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


__all__ = [
    "PRIVATE_API",
    "HandlerAppRunner",
    "SendfileResponse",
    "add_domain_subapp",
    "server_with_handler",
]
