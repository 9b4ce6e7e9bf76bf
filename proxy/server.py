"""The HTTP server wrapper: aiohttp's runner, but requests it cannot parse get a clean JSON 4xx.

aiohttp's default ``RequestHandler.handle_error`` answers a request its parser rejects (a control
character in a header, a space before a header's colon, a space in the path...) with a text/plain
body quoting the offending raw line, and logs that line with a traceback on ``aiohttp.server``.
Such a line is often the ``Authorization`` header, so a secret would be echoed and logged.  Here the
answer is ``{"error": <reason phrase>}`` and the log line names only the status, the exception's
class and the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

from .compat import HandlerAppRunner

log = logging.getLogger("pkgate.server")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad request" if status < 500 else "Server error"


class SafeRequestHandler(RequestHandler):
    """A connection handler whose error answers and log lines never quote the request."""

    # The Authorization header last seen on this connection with what the registry gate read
    # from it (``proxy.ratelimit.read_credentials``): the header, the secret and its digest.
    credentials: tuple[str | None, str | None, str | None] | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer ``{"error": phrase}`` and log one line without the request's bytes."""
        # Neither ``message`` nor ``str(exc)`` is used: both may quote a raw header line.
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(
            level,
            "answered %d to an unusable request from %s (%s)",
            status,
            request.remote or "unknown",
            exc.__class__.__name__ if exc is not None else "no exception",
        )
        if request.writer.output_size > 0:
            # Part of an answer is already out; all that is left is to drop the connection.
            raise ConnectionError("response already started")
        phrase = "Bad request" if status == 400 else _phrase(status)
        resp = web.json_response({"error": phrase}, status=status, headers={"Server": "pkgate"})
        resp.force_close()
        return resp


class SafeAppRunner(HandlerAppRunner):
    """``web.AppRunner`` whose connections are ``SafeRequestHandler`` (see ``proxy.compat``)."""

    handler_class = SafeRequestHandler


async def _serve_forever(runner: web.AppRunner, sock: socket.socket) -> None:
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_app(
    app: web.Application,
    *,
    sock: socket.socket,
    access_log: logging.Logger | None,
    access_log_class: type[AbstractAccessLogger],
    shutdown_timeout: float,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT, like ``web.run_app`` with a safe server."""
    # handle_signals turns SIGTERM/SIGINT into GracefulExit; the runner's cleanup then stops
    # listening, waits up to shutdown_timeout for in-flight requests and runs cleanup contexts.
    runner = SafeAppRunner(
        app,
        handle_signals=True,
        access_log=access_log,
        access_log_class=access_log_class,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=75.0,  # web.run_app's default
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_forever(runner, sock))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
